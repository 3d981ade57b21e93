//! Converts [`RawConfig`] into a typed [`Config`], checking every value.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{
    RawCache, RawCertificate, RawConfig, RawEndpoint, RawEndpoints, RawHealthCheck, RawLimits,
    RawListener, RawOutlierDetection, RawPool, RawPort, RawRateLimit, RawRetries, RawSize,
    RawSlowStart, RawStatus, RawSticky, RawTimeouts,
};
use super::units::{format_duration, parse_duration, parse_size};
use super::{
    Admin, Balance, CacheSettings, Certificate, Config, DEFAULT_WEIGHT, Discovery, DnsSource,
    EndpointSpec, FieldError, FileSource, HealthCheck, HostMatch, KubernetesPort, KubernetesSource,
    Limits, Listener, OutlierDetection, Pool, QueueSettings, RateLimit, Retries, Route, Shutdown,
    Sticky, Timeouts, Tls,
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
                drain_timeout: duration_in(
                    s.drain_timeout,
                    "shutdown.drainTimeout",
                    d.drain_timeout,
                    bounds::DRAIN,
                )?,
                delay: duration_in(s.delay, "shutdown.delay", d.delay, bounds::SHUTDOWN_DELAY)?,
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
        let pool = pool(name.clone(), p, &at, base)?;
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
            rate_limit: r
                .rate_limit
                .map(|l| rate_limit(l, &format!("{at}.rateLimit")))
                .transpose()?,
            cache: r
                .cache
                .map(|c| cache(c, &format!("{at}.cache")))
                .transpose()?,
        });
    }

    for (name, pool) in &pools {
        let Some(backup) = &pool.backup_pool else {
            continue;
        };
        let at = format!("pools.{name}.backupPool");
        match pools.get(backup) {
            None => {
                return Err(FieldError::new(at, format!("no pool named `{backup}`")));
            }
            Some(_) if backup == name => {
                return Err(FieldError::new(at, "a pool cannot be its own backup"));
            }
            Some(b) if b.backup_pool.is_some() => {
                return Err(FieldError::new(
                    at,
                    format!("`{backup}` has a backup pool of its own; backups do not chain"),
                ));
            }
            Some(_) => {}
        }
    }

    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let text = t.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    FieldError::new(
                        format!("trustedProxies[{i}]"),
                        format!("`{t}` is not an address or CIDR network; write it like `10.0.0.0/8` or `192.0.2.10`"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;

    let max_connections = raw
        .max_connections
        .map(|n| number_in(n, "maxConnections", bounds::MAX_CONNECTIONS))
        .transpose()?
        .map(|n| n as usize);

    Ok(Config {
        max_connections,
        source: source.to_path_buf(),
        listeners,
        admin,
        shutdown,
        routes,
        pools,
        trusted_proxies,
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
        access_log: l.access_log.unwrap_or(false),
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
    let max_header_bytes = size_in(
        raw.max_header_bytes,
        &format!("{at}.maxHeaderBytes"),
        d.max_header_bytes as u64,
        bounds::MAX_HEADER_BYTES,
    )?;
    Ok(Limits {
        header_read_timeout: duration_in(
            raw.header_read_timeout,
            &format!("{at}.headerReadTimeout"),
            d.header_read_timeout,
            bounds::HEADER_READ_TIMEOUT,
        )?,
        max_header_bytes: max_header_bytes as usize,
        max_body_bytes: size_in(
            raw.max_body_bytes,
            &format!("{at}.maxBodyBytes"),
            d.max_body_bytes,
            bounds::MAX_BODY_BYTES,
        )?,
        idle_timeout: duration_in(
            raw.idle_timeout,
            &format!("{at}.idleTimeout"),
            d.idle_timeout,
            bounds::IDLE_CONNECTION,
        )?,
        max_connections: raw
            .max_connections
            .map(|n| number_in(n, &format!("{at}.maxConnections"), bounds::MAX_CONNECTIONS))
            .transpose()?
            .map(|n| n as usize),
    })
}

fn pool(name: String, p: RawPool, at: &str, base: &Path) -> Result<Pool> {
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
    let discovery = discovery(&p.endpoints, &format!("{at}.endpoints"), base)?;
    if p.endpoints.static_list.is_empty() && discovery == Discovery::default() {
        return Err(FieldError::new(
            format!("{at}.endpoints"),
            "the pool has no endpoints; list at least one `host:port` under `static`, or name a `file`, `dns` or `kubernetes` source",
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
    let pool = Pool {
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
        discovery,
        sticky: p
            .sticky_sessions
            .map(|s| sticky(s, &format!("{at}.stickySessions"), base))
            .transpose()?,
        slow_start: p
            .slow_start
            .map(|s| slow_start(s, &format!("{at}.slowStart")))
            .transpose()?,
        max_in_flight_per_endpoint: p
            .max_in_flight_per_endpoint
            .map(|n| {
                number_in(
                    n,
                    &format!("{at}.maxInFlightPerEndpoint"),
                    bounds::MAX_IN_FLIGHT,
                )
            })
            .transpose()?,
        queue: match p.queue {
            None => None,
            Some(q) => {
                if p.max_in_flight_per_endpoint.is_none() {
                    return Err(FieldError::new(
                        format!("{at}.queue"),
                        "a queue needs `maxInFlightPerEndpoint`: requests queue when every endpoint is at that limit",
                    ));
                }
                if q.max_length == 0 || q.max_length > 1_000_000 {
                    return Err(FieldError::new(
                        format!("{at}.queue.maxLength"),
                        "use 1 to 1000000",
                    ));
                }
                Some(QueueSettings {
                    max_length: q.max_length as usize,
                    timeout: duration_in(
                        q.timeout,
                        &format!("{at}.queue.timeout"),
                        Duration::from_secs(10),
                        bounds::QUEUE_TIMEOUT,
                    )?,
                    session_priority: q.session_priority.unwrap_or(true),
                })
            }
        },
        backup_pool: p.backup_pool,
        drain_timeout: duration_in(
            p.drain_timeout,
            &format!("{at}.drainTimeout"),
            Duration::from_secs(30),
            bounds::POOL_DRAIN,
        )?,
    };
    if let (Some(st), Some(q)) = (&pool.sticky, &pool.queue)
        && st.placement.max_wait >= q.timeout
    {
        return Err(FieldError::new(
            format!("{at}.stickySessions.sessionPlacement.maxWait"),
            format!(
                "{} is not below the queue timeout {}: a new session waiting for starting pods would time out instead of being placed; make it shorter",
                crate::config::units::format_duration(st.placement.max_wait),
                crate::config::units::format_duration(q.timeout),
            ),
        ));
    }
    Ok(pool)
}

fn discovery(raw: &RawEndpoints, at: &str, base: &Path) -> Result<Discovery> {
    let file = raw
        .file
        .as_ref()
        .map(|f| {
            if f.path.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{at}.file.path"),
                    "the path is empty",
                ));
            }
            Ok(FileSource {
                path: base.join(&f.path),
                interval: duration_in(
                    f.interval.clone(),
                    &format!("{at}.file.interval"),
                    Duration::from_secs(1),
                    bounds::DISCOVERY_INTERVAL,
                )?,
            })
        })
        .transpose()?;
    let dns = raw
        .dns
        .as_ref()
        .map(|d| {
            if d.name.trim().is_empty() || d.name.contains(':') || d.name.contains('/') {
                return Err(FieldError::new(
                    format!("{at}.dns.name"),
                    format!(
                        "`{}` is not a DNS name; write it like `moodle.lms.svc.cluster.local`",
                        d.name
                    ),
                ));
            }
            if d.port == 0 {
                return Err(FieldError::new(
                    format!("{at}.dns.port"),
                    "must be 1 to 65535",
                ));
            }
            let nameservers = d
                .nameservers
                .iter()
                .enumerate()
                .map(|(i, n)| socket_addr(n, &format!("{at}.dns.nameservers[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            Ok(DnsSource {
                name: d.name.trim().to_string(),
                port: d.port,
                interval: duration_in(
                    d.interval.clone(),
                    &format!("{at}.dns.interval"),
                    Duration::from_secs(5),
                    bounds::DISCOVERY_INTERVAL,
                )?,
                nameservers,
            })
        })
        .transpose()?;
    let kubernetes = raw
        .kubernetes
        .as_ref()
        .map(|k| {
            let dns_label = |v: &str| {
                !v.is_empty()
                    && v.len() <= 63
                    && v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            };
            if !dns_label(&k.service) {
                return Err(FieldError::new(
                    format!("{at}.kubernetes.service"),
                    format!("`{}` is not a Service name (lower-case letters, digits and `-`)", k.service),
                ));
            }
            let namespace = k.namespace.clone().unwrap_or_else(|| "default".to_string());
            if !dns_label(&namespace) {
                return Err(FieldError::new(
                    format!("{at}.kubernetes.namespace"),
                    format!("`{namespace}` is not a namespace name"),
                ));
            }
            let port = match &k.port {
                RawPort::Number(0) => {
                    return Err(FieldError::new(format!("{at}.kubernetes.port"), "must be 1 to 65535 or a port name"));
                }
                RawPort::Number(n) => KubernetesPort::Number(*n),
                RawPort::Name(n) if dns_label(n) => KubernetesPort::Name(n.clone()),
                RawPort::Name(n) => {
                    return Err(FieldError::new(
                        format!("{at}.kubernetes.port"),
                        format!("`{n}` is not a port name; give the pod port number or the Service port's name"),
                    ));
                }
            };
            Ok(KubernetesSource { service: k.service.clone(), namespace, port })
        })
        .transpose()?;
    Ok(Discovery {
        file,
        dns,
        kubernetes,
    })
}

fn cookie_name(name: &str, at: &str) -> Result<String> {
    // RFC 6265 token characters.
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(FieldError::new(
            at,
            format!("`{name}` is not a cookie name; use letters, digits, `-` and `_`"),
        ))
    }
}

fn sticky(raw: RawSticky, at: &str, base: &Path) -> Result<Sticky> {
    let cookie = cookie_name(
        raw.cookie.as_deref().unwrap_or("usher_affinity"),
        &format!("{at}.cookie"),
    )?;
    let application_cookie = raw
        .application_cookie
        .as_deref()
        .map(|c| cookie_name(c, &format!("{at}.applicationCookie")))
        .transpose()?;
    if application_cookie.as_deref() == Some(cookie.as_str()) {
        return Err(FieldError::new(
            format!("{at}.cookie"),
            format!(
                "`{cookie}` is the application's cookie; give the balancer's own cookie another name"
            ),
        ));
    }
    let secret = match (raw.secret, raw.secret_file) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                format!("{at}.secretFile"),
                "give `secret` or `secretFile`, not both",
            ));
        }
        (Some(s), None) => Some(s),
        (None, Some(f)) => {
            let path = base.join(&f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                FieldError::new(
                    format!("{at}.secretFile"),
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?;
            Some(text.trim().to_string())
        }
        (None, None) => None,
    };
    if secret.as_deref().is_some_and(|s| s.len() < 16) {
        return Err(FieldError::new(
            format!("{at}.secret"),
            "the secret is shorter than 16 characters; use a long random string",
        ));
    }
    let mobility = match raw.mobility.as_deref() {
        None | Some("local") => crate::config::Mobility::Local,
        Some("shared") => crate::config::Mobility::Shared,
        Some(other) => {
            return Err(FieldError::new(
                format!("{at}.mobility"),
                format!(
                    "unknown mobility `{other}`; use `local` (sessions kept on the pod) or `shared` (sessions in a shared store such as Redis)"
                ),
            ));
        }
    };
    if raw.balance_factor.is_some() && mobility != crate::config::Mobility::Shared {
        return Err(FieldError::new(
            format!("{at}.balanceFactor"),
            "only `mobility: shared` moves sessions; set it, or remove balanceFactor",
        ));
    }
    let balance_factor = number_in(
        raw.balance_factor.unwrap_or(1.5),
        &format!("{at}.balanceFactor"),
        bounds::BALANCE_FACTOR,
    )?;
    let defaults = crate::config::SessionPlacement::default();
    let placement = match raw.session_placement {
        None => defaults,
        Some(p) => crate::config::SessionPlacement {
            max_wait: duration_in(
                p.max_wait,
                &format!("{at}.sessionPlacement.maxWait"),
                defaults.max_wait,
                bounds::PLACEMENT_WAIT,
            )?,
            live_for: duration_in(
                p.live_for,
                &format!("{at}.sessionPlacement.liveFor"),
                defaults.live_for,
                bounds::SESSION_LIVE_FOR,
            )?,
            starting_for: duration_in(
                p.starting_for,
                &format!("{at}.sessionPlacement.startingFor"),
                defaults.starting_for,
                bounds::STARTING_FOR,
            )?,
        },
    };
    Ok(Sticky {
        cookie,
        ttl: duration_in(
            raw.ttl,
            &format!("{at}.ttl"),
            Duration::from_secs(8 * 3600),
            bounds::STICKY_TTL,
        )?,
        application_cookie,
        secret,
        mobility,
        balance_factor,
        placement,
    })
}

fn slow_start(raw: RawSlowStart, at: &str) -> Result<crate::balance::slow_start::SlowStart> {
    let window = duration_in(
        Some(raw.window),
        &format!("{at}.window"),
        Duration::ZERO,
        bounds::SLOW_START_WINDOW,
    )?;
    let aggression = number_in(
        raw.aggression.unwrap_or(1.0),
        &format!("{at}.aggression"),
        bounds::AGGRESSION,
    )?;
    let min = raw.min_weight_percent.unwrap_or(10.0);
    if !(0.0..=100.0).contains(&min) {
        return Err(FieldError::new(
            format!("{at}.minWeightPercent"),
            "must be 0 to 100",
        ));
    }
    Ok(crate::balance::slow_start::SlowStart {
        window,
        aggression,
        min_weight_fraction: min / 100.0,
    })
}

fn rate_limit(raw: RawRateLimit, at: &str) -> Result<RateLimit> {
    let rps = number_in(
        raw.requests_per_second,
        &format!("{at}.requestsPerSecond"),
        bounds::RATE,
    )?;
    let burst = number_in(
        raw.burst.unwrap_or(rps.max(1.0)),
        &format!("{at}.burst"),
        bounds::BURST,
    )?;
    Ok(RateLimit {
        requests_per_second: rps,
        burst,
    })
}

fn cache(raw: RawCache, at: &str) -> Result<CacheSettings> {
    let ttl = duration_in(
        Some(raw.ttl),
        &format!("{at}.ttl"),
        Duration::ZERO,
        bounds::CACHE_TTL,
    )?;
    let max_entries = number_in(
        raw.max_entries.unwrap_or(10_000),
        &format!("{at}.maxEntries"),
        bounds::CACHE_ENTRIES,
    )?;
    let session_cookies = match raw.session_cookies {
        None => [
            "MoodleSession",
            "_normandy_session",
            "_legacy_normandy_session",
            "sessionid",
            "edxloggedin",
        ]
        .map(String::from)
        .to_vec(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| cookie_name(c, &format!("{at}.sessionCookies[{i}]")))
            .collect::<Result<_>>()?,
    };
    Ok(CacheSettings {
        ttl,
        max_entries,
        max_body_bytes: size_in(
            raw.max_body_bytes,
            &format!("{at}.maxBodyBytes"),
            1 << 20,
            bounds::CACHE_BODY_BYTES,
        )?,
        session_cookies,
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
    Ok(EndpointSpec {
        address,
        weight,
        draining: false,
        starting: false,
    })
}

fn health_check(h: RawHealthCheck, at: &str) -> Result<HealthCheck> {
    let path = h.path.unwrap_or_else(|| "/healthz".to_string());
    if !path.starts_with('/') {
        return Err(FieldError::new(
            format!("{at}.path"),
            format!("`{path}` must start with `/`"),
        ));
    }
    let interval = duration_in(
        h.interval,
        &format!("{at}.interval"),
        Duration::from_secs(2),
        bounds::CHECK_INTERVAL,
    )?;
    let timeout = duration_in(
        h.timeout,
        &format!("{at}.timeout"),
        Duration::from_secs(1).min(interval),
        bounds::CHECK_TIMEOUT,
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
    let rise = count_in(h.rise, &format!("{at}.rise"), 2, bounds::RISE_FALL)?;
    let fall = count_in(h.fall, &format!("{at}.fall"), 3, bounds::RISE_FALL)?;
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
    let base = duration_in(
        o.base_ejection_time,
        &format!("{at}.baseEjectionTime"),
        d.base_ejection_time,
        bounds::EJECTION_TIME,
    )?;
    let max = duration_in(
        o.max_ejection_time,
        &format!("{at}.maxEjectionTime"),
        d.max_ejection_time.max(base),
        bounds::EJECTION_TIME,
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
        consecutive_5xx: count_in(
            o.consecutive_5xx,
            &format!("{at}.consecutive5xx"),
            d.consecutive_5xx,
            bounds::CONSECUTIVE_5XX,
        )?,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: percent,
        active_check_ends_ejection: o.active_check_ends_ejection.unwrap_or(false),
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
        min_concurrency: number_in(
            r.min_concurrency.unwrap_or(d.min_concurrency),
            &format!("{at}.minConcurrency"),
            bounds::RETRY_MIN_CONCURRENCY,
        )?,
    })
}

fn timeouts(raw: Option<RawTimeouts>, at: &str) -> Result<Timeouts> {
    let d = Timeouts::default();
    let Some(t) = raw else { return Ok(d) };
    Ok(Timeouts {
        connect: duration_in(
            t.connect,
            &format!("{at}.connect"),
            d.connect,
            bounds::CONNECT_TIMEOUT,
        )?,
        response: duration_in(
            t.response,
            &format!("{at}.response"),
            d.response,
            bounds::RESPONSE_TIMEOUT,
        )?,
        idle: duration_in(t.idle, &format!("{at}.idle"), d.idle, bounds::IDLE_TIMEOUT)?,
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

pub(super) fn host_port(text: &str, at: &str) -> Result<()> {
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

/// The range a duration field may take.
type DurationRange = (Duration, Duration);

/// Parses an optional duration (the default when absent) and checks that it
/// lies in `range`; the error names the field and the allowed range.
fn duration_in(
    text: Option<String>,
    at: &str,
    default: Duration,
    (min, max): DurationRange,
) -> Result<Duration> {
    let d = match text {
        None => return Ok(default),
        Some(t) => parse_duration(&t).map_err(|e| FieldError::new(at, e))?,
    };
    if d < min || d > max {
        let shown = format_duration;
        let what = if d.is_zero() {
            "must be longer than zero".to_string()
        } else {
            format!("{} is out of range", shown(d))
        };
        return Err(FieldError::new(
            at,
            format!("{what}; use {} to {}", shown(min), shown(max)),
        ));
    }
    Ok(d)
}

/// Parses an optional size (the default when absent) and checks it against
/// `min..=max` bytes.
fn size_in(raw: Option<RawSize>, at: &str, default: u64, (min, max): (u64, u64)) -> Result<u64> {
    let size = match raw {
        None => return Ok(default),
        Some(RawSize::Bytes(n)) => n,
        Some(RawSize::Text(t)) => parse_size(&t).map_err(|e| FieldError::new(at, e))?,
    };
    if size < min || size > max {
        let what = if size == 0 {
            "must be more than zero".to_string()
        } else {
            format!("{} is out of range", show_size(size))
        };
        return Err(FieldError::new(
            at,
            format!("{what}; use {} to {}", show_size(min), show_size(max)),
        ));
    }
    Ok(size)
}

/// A byte count as written in config files: `64KiB`, `1MiB`, or plain bytes.
fn show_size(n: u64) -> String {
    match n {
        0 => "0".to_string(),
        n if n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// An optional count (the default when absent), checked against `min..=max`.
fn count_in(value: Option<u32>, at: &str, default: u32, range: (u32, u32)) -> Result<u32> {
    number_in(value.unwrap_or(default), at, range)
}

/// Checks that `n` lies in `min..=max` (NaN never does).
fn number_in<T: PartialOrd + std::fmt::Display + Copy>(
    n: T,
    at: &str,
    (min, max): (T, T),
) -> Result<T> {
    if n >= min && n <= max {
        Ok(n)
    } else {
        Err(FieldError::new(
            at,
            format!("{n} is out of range; use {min} to {max}"),
        ))
    }
}

/// The allowed range of every bounded number in the config. Values outside
/// them are refused by `check` and by a reload, so nothing the balancer
/// computes from them (deadlines, cache lifetimes, wait times) can overflow.
pub(crate) mod bounds {
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    /// `shutdown.drainTimeout`.
    pub const DRAIN: (Duration, Duration) = (Duration::from_millis(100), secs(HOUR));
    /// `shutdown.delay`.
    pub const SHUTDOWN_DELAY: (Duration, Duration) = (Duration::ZERO, secs(10 * MIN));
    /// `listeners[].limits.headerReadTimeout`.
    pub const HEADER_READ_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(100), secs(10 * MIN));
    /// `listeners[].limits.maxHeaderBytes`: 8 KiB to 1 MiB.
    pub const MAX_HEADER_BYTES: (u64, u64) = (8192, 1 << 20);
    /// `listeners[].limits.maxBodyBytes`: 1 byte to 64 GiB.
    pub const MAX_BODY_BYTES: (u64, u64) = (1, 64 << 30);
    /// `listeners[].limits.idleTimeout`.
    pub const IDLE_CONNECTION: (Duration, Duration) = (secs(1), secs(HOUR));
    /// `maxConnections` and `listeners[].limits.maxConnections`.
    pub const MAX_CONNECTIONS: (u64, u64) = (1, 1_000_000);
    /// `pools.*.queue.timeout`.
    pub const QUEUE_TIMEOUT: (Duration, Duration) = (MS, secs(10 * MIN));
    /// `pools.*.drainTimeout`.
    pub const POOL_DRAIN: (Duration, Duration) = (Duration::ZERO, secs(DAY));
    /// `endpoints.file.interval` and `endpoints.dns.interval`.
    pub const DISCOVERY_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), secs(DAY));
    /// `stickySessions.ttl`: browsers cap cookie lifetimes at 400 days.
    pub const STICKY_TTL: (Duration, Duration) = (secs(1), secs(400 * DAY));
    /// `stickySessions.balanceFactor`: above 1 (1 would move sessions off
    /// every pod above the average).
    pub const BALANCE_FACTOR: (f64, f64) = (1.05, 10.0);
    /// `stickySessions.sessionPlacement.maxWait`.
    pub const PLACEMENT_WAIT: (Duration, Duration) = (Duration::ZERO, secs(MIN));
    /// `stickySessions.sessionPlacement.startingFor`.
    pub const STARTING_FOR: (Duration, Duration) = (secs(1), secs(HOUR));
    /// `stickySessions.sessionPlacement.liveFor`.
    pub const SESSION_LIVE_FOR: (Duration, Duration) = (secs(10), secs(DAY));
    /// `slowStart.window`.
    pub const SLOW_START_WINDOW: (Duration, Duration) = (Duration::from_millis(100), secs(HOUR));
    /// `routes[].cache.ttl`: a micro-cache.
    pub const CACHE_TTL: (Duration, Duration) = (MS, secs(DAY));
    /// `routes[].cache.maxBodyBytes`: bodies are held in memory.
    pub const CACHE_BODY_BYTES: (u64, u64) = (1, 64 << 20);
    /// `routes[].cache.maxEntries`.
    pub const CACHE_ENTRIES: (u64, u64) = (1, 10_000_000);
    /// `healthCheck.interval`.
    pub const CHECK_INTERVAL: (Duration, Duration) = (Duration::from_millis(100), secs(HOUR));
    /// `healthCheck.timeout` (also at most the interval).
    pub const CHECK_TIMEOUT: (Duration, Duration) = (MS, secs(HOUR));
    /// `healthCheck.rise` and `fall`.
    pub const RISE_FALL: (u32, u32) = (1, 100);
    /// `outlierDetection.consecutive5xx`.
    pub const CONSECUTIVE_5XX: (u32, u32) = (1, 10_000);
    /// `outlierDetection.baseEjectionTime` and `maxEjectionTime`.
    pub const EJECTION_TIME: (Duration, Duration) = (Duration::from_millis(100), secs(DAY));
    /// `timeouts.connect`.
    pub const CONNECT_TIMEOUT: (Duration, Duration) = (MS, secs(10 * MIN));
    /// `timeouts.response`.
    pub const RESPONSE_TIMEOUT: (Duration, Duration) = (MS, secs(DAY));
    /// `timeouts.idle`.
    pub const IDLE_TIMEOUT: (Duration, Duration) = (MS, secs(HOUR));
    /// `maxInFlightPerEndpoint`.
    pub const MAX_IN_FLIGHT: (u64, u64) = (1, 1_000_000);
    /// `retries.minConcurrency`.
    pub const RETRY_MIN_CONCURRENCY: (u32, u32) = (0, 100_000);
    /// `rateLimit.requestsPerSecond`.
    pub const RATE: (f64, f64) = (0.001, 1_000_000.0);
    /// `rateLimit.burst`.
    pub const BURST: (f64, f64) = (1.0, 1_000_000.0);
    /// `slowStart.aggression`.
    pub const AGGRESSION: (f64, f64) = (0.01, 100.0);
}
