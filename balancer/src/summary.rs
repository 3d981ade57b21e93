//! The one-screen summary printed by `usher-balancer check`.

use std::fmt::Write as _;

use crate::config::{Balance, Config};

/// Renders `config` for humans.
pub fn render(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", config.source.display());
    let _ = writeln!(out, "listeners:");
    for l in &config.listeners {
        let tls = match &l.tls {
            None => "plain HTTP".to_string(),
            Some(t) => {
                let names: Vec<String> = t
                    .certificates
                    .iter()
                    .map(|c| c.server_names.join(","))
                    .collect();
                format!(
                    "TLS, {} certificate(s): {}",
                    t.certificates.len(),
                    names.join(" | ")
                )
            }
        };
        let _ = writeln!(out, "  {:<12} {:<22} {}", l.name, l.bind, tls);
    }
    match &config.admin {
        Some(a) => {
            let _ = writeln!(
                out,
                "admin:\n  {:<12} {:<22} {}",
                "admin",
                a.bind,
                if a.token.is_some() {
                    "token required"
                } else {
                    "no token"
                }
            );
        }
        None => {
            let _ = writeln!(out, "admin: off");
        }
    }
    let _ = writeln!(out, "routes:");
    for r in &config.routes {
        let host = r
            .host
            .as_ref()
            .map_or_else(|| "*".to_string(), ToString::to_string);
        let _ = writeln!(out, "  {host}{} -> {}", r.path_prefix, r.pool);
    }
    let _ = writeln!(out, "pools:");
    for p in config.pools.values() {
        let balance = match p.balance {
            Balance::LeastConnections => "leastConnections",
            Balance::PowerOfTwoChoices => "powerOfTwoChoices",
        };
        let checks = p.health_check.as_ref().map_or_else(
            || "no active checks".to_string(),
            |h| {
                format!(
                    "checks GET {} every {}",
                    h.path,
                    humantime::format_duration(h.interval)
                )
            },
        );
        let _ = writeln!(
            out,
            "  {:<12} {} endpoint(s), {balance}, {checks}",
            p.name,
            p.endpoints.len()
        );
    }
    out
}
