//! Converts [`RawConfig`] into a typed [`Config`], checking every value.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{
    RawCertificate, RawConfig, RawEndpoint, RawHealthCheck, RawLimits, RawListener,
    RawOutlierDetection, RawPool, RawRetries, RawSize, RawStatus, RawTimeouts,
};
use super::units::{parse_duration, parse_size};
use super::{
    Admin, Balance, Certificate, Config, DEFAULT_WEIGHT, EndpointSpec, FieldError, HealthCheck,
    HostMatch, Limits, Listener, OutlierDetection, Pool, Retries, Route, Shutdown, Timeouts, Tls,
};

type Result<T> = std::result::Result<T, FieldError>;

/// Validates `raw`; `base` anchors relative file paths.
pub(super) fn config(raw: RawConfig, base: &Path, source: &Path) -> Result<Config> {
    if raw.listeners.is_empty() {
        return Err(FieldError::new(
            "listeners",
            "no listeners; add one such as `- {name: public, bind: \"0.0.0.0:8080\"}`",
        ));
    }
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let at = format!("listeners[{i}]");
        let listener = listener(l, &at, base)?;
        if !names.insert(listener.name.clone()) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!(
                    "listener name `{}` is used twice; names must be unique",
                    listener.name
                ),
            ));
        }
        if listener.bind.port() != 0 && !binds.insert(listener.bind) {
            return Err(FieldError::new(
                format!("{at}.bind"),
                format!(
                    "`{}` is bound by another listener; use another port",
                    listener.bind
                ),
            ));
        }
        listeners.push(listener);
    }

    let admin = match raw.admin {
        None => None,
        Some(a) => {
            let bind = socket_addr(&a.bind, "admin.bind")?;
            if bind.port() != 0 && binds.contains(&bind) {
                return Err(FieldError::new(
                    "admin.bind",
                    format!(
                        "`{bind}` is also a listener's address; give the admin listener its own port"
                    ),
                ));
            }
            if a.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(FieldError::new(
                    "admin.token",
                    "the token is empty; remove the key or set a long random string",
                ));
            }
            Some(Admin {
                bind,
                token: a.token,
            })
        }
    };

    let shutdown = match raw.shutdown {
        None => Shutdown::default(),
        Some(s) => {
            let d = Shutdown::default();
            Shutdown {
                drain_timeout: duration_or(
                    s.drain_timeout,
                    "shutdown.drainTimeout",
                    d.drain_timeout,
                )?,
                delay: duration_or_zero(s.delay, "shutdown.delay", d.delay)?,
            }
        }
    };

    if raw.pools.is_empty() {
        return Err(FieldError::new(
            "pools",
            "no pools; define at least one pool of endpoints",
        ));
    }
    let mut pools = BTreeMap::new();
    for (name, p) in raw.pools {
        let at = format!("pools.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(FieldError::new(
                at,
                format!("pool name `{name}` may use only letters, digits, `-` and `_`"),
            ));
        }
        let pool = pool(name.clone(), p, &at)?;
        pools.insert(name, pool);
    }

    if raw.routes.is_empty() {
        return Err(FieldError::new(
            "routes",
            "no routes; add one such as `- {pathPrefix: /, pool: <pool name>}`",
        ));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = format!("routes[{i}]");
        if !pools.contains_key(&r.pool) {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            return Err(FieldError::new(
                format!("{at}.pool"),
                format!(
                    "no pool named `{}`; defined pools: {}",
                    r.pool,
                    known.join(", ")
                ),
            ));
        }
        let host = r
            .host
            .as_deref()
            .map(|h| host_match(h, &format!("{at}.host")))
            .transpose()?;
        let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
        if !path_prefix.starts_with('/') {
            return Err(FieldError::new(
                format!("{at}.pathPrefix"),
                format!("`{path_prefix}` must start with `/`"),
            ));
        }
        routes.push(Route {
            host,
            path_prefix,
            pool: r.pool,
        });
    }

    Ok(Config {
        source: source.to_path_buf(),
        listeners,
        admin,
        shutdown,
        routes,
        pools,
    })
}

fn listener(l: RawListener, at: &str, base: &Path) -> Result<Listener> {
    if l.name.trim().is_empty() {
        return Err(FieldError::new(
            format!("{at}.name"),
            "the name is empty; give the listener a name",
        ));
    }
    let bind = socket_addr(&l.bind, &format!("{at}.bind"))?;
    let tls = match l.tls {
        None => None,
        Some(t) => {
            if t.certificates.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.tls.certificates"),
                    "no certificates; add `- {certFile: cert.pem, keyFile: key.pem}` or remove `tls`",
                ));
            }
            let certificates = t
                .certificates
                .into_iter()
                .enumerate()
                .map(|(i, c)| certificate(c, &format!("{at}.tls.certificates[{i}]"), base))
                .collect::<Result<Vec<_>>>()?;
            Some(Tls { certificates })
        }
    };
    let limits = limits(l.limits.unwrap_or_default(), &format!("{at}.limits"))?;
    Ok(Listener {
        name: l.name,
        bind,
        tls,
        limits,
    })
}

fn certificate(c: RawCertificate, at: &str, base: &Path) -> Result<Certificate> {
    let cert_file = base.join(&c.cert_file);
    let key_file = base.join(&c.key_file);
    let loaded = crate::tls::load_certified_key(&cert_file, &key_file)
        .map_err(|e| FieldError::new(format!("{at}.{}", e.field), e.problem))?;
    let server_names = match c.server_names {
        Some(names) => {
            if names.is_empty() {
                return Err(FieldError::new(
                    format!("{at}.serverNames"),
                    "the list is empty; remove it to use the names in the certificate",
                ));
            }
            names
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .collect()
        }
        None => loaded.names,
    };
    Ok(Certificate {
        cert_file,
        key_file,
        server_names,
        key: loaded.key,
    })
}

fn limits(raw: RawLimits, at: &str) -> Result<Limits> {
    let d = Limits::default();
    let max_header_bytes = size_or(
        raw.max_header_bytes,
        &format!("{at}.maxHeaderBytes"),
        d.max_header_bytes as u64,
    )?;
    if !(8192..=1 << 20).contains(&max_header_bytes) {
        return Err(FieldError::new(
            format!("{at}.maxHeaderBytes"),
            format!("{max_header_bytes} is out of range; use 8KiB to 1MiB"),
        ));
    }
    Ok(Limits {
        header_read_timeout: duration_or(
            raw.header_read_timeout,
            &format!("{at}.headerReadTimeout"),
            d.header_read_timeout,
        )?,
        max_header_bytes: max_header_bytes as usize,
        max_body_bytes: size_or(
            raw.max_body_bytes,
            &format!("{at}.maxBodyBytes"),
            d.max_body_bytes,
        )?,
    })
}

fn pool(name: String, p: RawPool, at: &str) -> Result<Pool> {
    let balance = match p.balance.as_deref() {
        None | Some("leastConnections") => Balance::LeastConnections,
        Some("powerOfTwoChoices") => Balance::PowerOfTwoChoices,
        Some(other) => {
            return Err(FieldError::new(
                format!("{at}.balance"),
                format!(
                    "unknown algorithm `{other}`; use `leastConnections` or `powerOfTwoChoices`"
                ),
            ));
        }
    };
    if p.endpoints.static_list.is_empty() {
        return Err(FieldError::new(
            format!("{at}.endpoints.static"),
            "the pool has no endpoints; list at least one `host:port`",
        ));
    }
    let mut seen = HashSet::new();
    let mut endpoints = Vec::with_capacity(p.endpoints.static_list.len());
    for (i, e) in p.endpoints.static_list.into_iter().enumerate() {
        let eat = format!("{at}.endpoints.static[{i}]");
        let spec = endpoint(e, &eat)?;
        if !seen.insert(spec.address.clone()) {
            return Err(FieldError::new(
                eat,
                format!(
                    "`{}` is listed twice; list each endpoint once and use `weight` to favour it",
                    spec.address
                ),
            ));
        }
        endpoints.push(spec);
    }
    Ok(Pool {
        name,
        balance,
        endpoints,
        health_check: p
            .health_check
            .map(|h| health_check(h, &format!("{at}.healthCheck")))
            .transpose()?,
        outlier_detection: outlier(p.outlier_detection, &format!("{at}.outlierDetection"))?,
        retries: retries(p.retries, &format!("{at}.retries"))?,
        timeouts: timeouts(p.timeouts, &format!("{at}.timeouts"))?,
    })
}

fn endpoint(e: RawEndpoint, at: &str) -> Result<EndpointSpec> {
    let (address, weight, addr_at) = match e {
        RawEndpoint::Address(a) => (a, DEFAULT_WEIGHT, at.to_string()),
        RawEndpoint::Detailed(d) => (
            d.address,
            d.weight.unwrap_or(DEFAULT_WEIGHT),
            format!("{at}.address"),
        ),
    };
    host_port(&address, &addr_at)?;
    if !(1..=1000).contains(&weight) {
        return Err(FieldError::new(
            format!("{at}.weight"),
            format!("weight {weight} is out of range; use 1 to 1000 (default {DEFAULT_WEIGHT})"),
        ));
    }
    Ok(EndpointSpec { address, weight })
}

fn health_check(h: RawHealthCheck, at: &str) -> Result<HealthCheck> {
    let path = h.path.unwrap_or_else(|| "/healthz".to_string());
    if !path.starts_with('/') {
        return Err(FieldError::new(
            format!("{at}.path"),
            format!("`{path}` must start with `/`"),
        ));
    }
    let interval = duration_or(
        h.interval,
        &format!("{at}.interval"),
        Duration::from_secs(2),
    )?;
    let timeout = duration_or(
        h.timeout,
        &format!("{at}.timeout"),
        Duration::from_secs(1).min(interval),
    )?;
    if timeout > interval {
        return Err(FieldError::new(
            format!("{at}.timeout"),
            format!(
                "timeout {} is longer than the interval {}; make it at most the interval",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        ));
    }
    let rise = count_or(h.rise, &format!("{at}.rise"), 2)?;
    let fall = count_or(h.fall, &format!("{at}.fall"), 3)?;
    let expect_status = match h.expect_status {
        None => 200..=399,
        Some(RawStatus::Code(c)) => {
            status_code(c, &format!("{at}.expectStatus"))?;
            c..=c
        }
        Some(RawStatus::Range(text)) => {
            let bad = || {
                FieldError::new(
                    format!("{at}.expectStatus"),
                    format!("`{text}` is not a status range; write it like `200-399`"),
                )
            };
            let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
            let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
            status_code(lo, &format!("{at}.expectStatus"))?;
            status_code(hi, &format!("{at}.expectStatus"))?;
            if lo > hi {
                return Err(bad());
            }
            lo..=hi
        }
    };
    Ok(HealthCheck {
        path,
        interval,
        timeout,
        rise,
        fall,
        expect_status,
        host: h.host,
    })
}

fn outlier(raw: Option<RawOutlierDetection>, at: &str) -> Result<OutlierDetection> {
    let d = OutlierDetection::default();
    let Some(o) = raw else { return Ok(d) };
    let base = duration_or(
        o.base_ejection_time,
        &format!("{at}.baseEjectionTime"),
        d.base_ejection_time,
    )?;
    let max = duration_or(
        o.max_ejection_time,
        &format!("{at}.maxEjectionTime"),
        d.max_ejection_time.max(base),
    )?;
    if max < base {
        return Err(FieldError::new(
            format!("{at}.maxEjectionTime"),
            "shorter than baseEjectionTime; make it at least the base",
        ));
    }
    let percent = o.max_ejection_percent.unwrap_or(d.max_ejection_percent);
    if percent > 100 {
        return Err(FieldError::new(
            format!("{at}.maxEjectionPercent"),
            format!("{percent} is over 100"),
        ));
    }
    Ok(OutlierDetection {
        enabled: o.enabled.unwrap_or(true),
        consecutive_5xx: count_or(
            o.consecutive_5xx,
            &format!("{at}.consecutive5xx"),
            d.consecutive_5xx,
        )?,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: percent,
    })
}

fn retries(raw: Option<RawRetries>, at: &str) -> Result<Retries> {
    let d = Retries::default();
    let Some(r) = raw else { return Ok(d) };
    let attempts = r.attempts.unwrap_or(d.attempts);
    if attempts > 5 {
        return Err(FieldError::new(
            format!("{at}.attempts"),
            format!("{attempts} retries is too many; use 0 to 5"),
        ));
    }
    let budget_percent = r.budget_percent.unwrap_or(d.budget_percent);
    if budget_percent > 100 {
        return Err(FieldError::new(
            format!("{at}.budgetPercent"),
            format!("{budget_percent} is over 100"),
        ));
    }
    Ok(Retries {
        attempts,
        budget_percent,
        min_concurrency: r.min_concurrency.unwrap_or(d.min_concurrency),
    })
}

fn timeouts(raw: Option<RawTimeouts>, at: &str) -> Result<Timeouts> {
    let d = Timeouts::default();
    let Some(t) = raw else { return Ok(d) };
    Ok(Timeouts {
        connect: duration_or(t.connect, &format!("{at}.connect"), d.connect)?,
        response: duration_or(t.response, &format!("{at}.response"), d.response)?,
        idle: duration_or(t.idle, &format!("{at}.idle"), d.idle)?,
    })
}

fn socket_addr(text: &str, at: &str) -> Result<SocketAddr> {
    text.trim().parse().map_err(|_| {
        FieldError::new(
            at,
            format!(
                "`{text}` is not an `ip:port` address; write it like `0.0.0.0:8080` or `[::]:8080`"
            ),
        )
    })
}

fn host_port(text: &str, at: &str) -> Result<()> {
    let bad = || {
        FieldError::new(
            at,
            format!(
                "`{text}` is not `host:port`; write it like `10.0.0.5:8080` or `moodle-0.moodle:80`"
            ),
        )
    };
    // Port 0 is refused below for IP literals too: nothing can be reached on it.
    if text.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0
        || host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad());
    }
    Ok(())
}

fn host_match(text: &str, at: &str) -> Result<HostMatch> {
    let host = text.trim().to_ascii_lowercase();
    let bad = || {
        FieldError::new(
            at,
            format!(
                "`{text}` is not a host name; write it like `lms.example.edu` or `*.example.edu`, without scheme or port"
            ),
        )
    };
    let (suffix, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(bad());
    }
    Ok(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(host)
    })
}

fn status_code(code: u16, at: &str) -> Result<()> {
    if (100..=599).contains(&code) {
        Ok(())
    } else {
        Err(FieldError::new(
            at,
            format!("{code} is not an HTTP status; use 100 to 599"),
        ))
    }
}

fn duration_or(text: Option<String>, at: &str, default: Duration) -> Result<Duration> {
    let d = duration_or_zero(text, at, default)?;
    if d.is_zero() {
        return Err(FieldError::new(at, "must be longer than zero"));
    }
    Ok(d)
}

fn duration_or_zero(text: Option<String>, at: &str, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|e| FieldError::new(at, e)),
    }
}

fn size_or(raw: Option<RawSize>, at: &str, default: u64) -> Result<u64> {
    let size = match raw {
        None => return Ok(default),
        Some(RawSize::Bytes(n)) => n,
        Some(RawSize::Text(t)) => parse_size(&t).map_err(|e| FieldError::new(at, e))?,
    };
    if size == 0 {
        return Err(FieldError::new(at, "must be more than zero"));
    }
    Ok(size)
}

fn count_or(value: Option<u32>, at: &str, default: u32) -> Result<u32> {
    match value.unwrap_or(default) {
        0 => Err(FieldError::new(at, "must be at least 1")),
        n => Ok(n),
    }
}
