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
        let mut extras = Vec::new();
        if let Some(l) = &r.rate_limit {
            extras.push(format!(
                "rate limit {}/s burst {}",
                l.requests_per_second, l.burst
            ));
        }
        if let Some(c) = &r.cache {
            extras.push(format!("cache {}", humantime::format_duration(c.ttl)));
        }
        let extras = if extras.is_empty() {
            String::new()
        } else {
            format!(" ({})", extras.join(", "))
        };
        let _ = writeln!(out, "  {host}{} -> {}{extras}", r.path_prefix, r.pool);
    }
    if !config.trusted_proxies.is_empty() {
        let list: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(out, "trusted proxies: {}", list.join(", "));
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
        let mut extras = Vec::new();
        if let Some(f) = &p.discovery.file {
            extras.push(format!("endpoints from file {}", f.path.display()));
        }
        if let Some(d) = &p.discovery.dns {
            extras.push(format!("endpoints from DNS {} port {}", d.name, d.port));
        }
        if let Some(k) = &p.discovery.kubernetes {
            extras.push(format!(
                "endpoints from Service {}/{}",
                k.namespace, k.service
            ));
        }
        if let Some(st) = &p.sticky {
            extras.push(match &st.application_cookie {
                Some(app) => format!("sticky on {app}"),
                None => format!(
                    "sticky cookie {} for {}",
                    st.cookie,
                    humantime::format_duration(st.ttl)
                ),
            });
        }
        if let Some(ss) = &p.slow_start {
            extras.push(format!(
                "slow start {}",
                humantime::format_duration(ss.window)
            ));
        }
        if let Some(max) = p.max_in_flight_per_endpoint {
            extras.push(match &p.queue {
                Some(q) => format!(
                    "{max} in flight per endpoint, queue {} for {}",
                    q.max_length,
                    humantime::format_duration(q.timeout)
                ),
                None => format!("{max} in flight per endpoint, no queue"),
            });
        }
        if let Some(b) = &p.backup_pool {
            extras.push(format!("backup pool {b}"));
        }
        if !extras.is_empty() {
            let _ = writeln!(out, "  {:<12} {}", "", extras.join("; "));
        }
    }
    out
}
