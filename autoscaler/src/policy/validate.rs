//! Checks a [`RawPolicyDocument`] and converts it into a [`Policy`].

use std::str::FromStr;
use std::time::Duration;

use super::raw::{
    RawBehavior, RawMetricsSource, RawPolicyDocument, RawPredictive, RawRules, RawSchedule,
    RawSurge, RawTarget,
};
use super::{
    Behavior, DEFAULT_ADMIN_PORT, DEFAULT_BALANCER_SELECTOR, MetricsSource, Policy, PolicyError,
    Predictive, RateKind, RatePolicy, Rules, Schedule, Select, SourceKind, Surge, Target,
    TargetRef,
};

type Result<T> = std::result::Result<T, PolicyError>;

/// Validates a parsed document.
pub fn validate(doc: RawPolicyDocument) -> Result<Policy> {
    if doc.api_version != "usher.dev/v1alpha1" {
        return Err(PolicyError::new(
            "apiVersion",
            format!(
                "`{}` is not supported; use `usher.dev/v1alpha1`",
                doc.api_version
            ),
        ));
    }
    if doc.kind != "ScalingPolicy" {
        return Err(PolicyError::new(
            "kind",
            format!("`{}` is not `ScalingPolicy`", doc.kind),
        ));
    }
    if !dns_name(&doc.metadata.name) {
        return Err(PolicyError::new(
            "metadata.name",
            format!(
                "`{}` is not a valid name (lower-case letters, digits, `-`, `.`)",
                doc.metadata.name
            ),
        ));
    }
    let spec = doc.spec;
    let target_ref = TargetRef {
        api_version: spec
            .scale_target_ref
            .api_version
            .unwrap_or_else(|| "apps/v1".to_string()),
        kind: spec.scale_target_ref.kind,
        name: spec.scale_target_ref.name,
    };
    if target_ref.kind != "Deployment" {
        return Err(PolicyError::new(
            "spec.scaleTargetRef.kind",
            format!(
                "`{}` cannot be scaled by Usher; use `Deployment`",
                target_ref.kind
            ),
        ));
    }
    if !dns_name(&target_ref.name) {
        return Err(PolicyError::new(
            "spec.scaleTargetRef.name",
            format!("`{}` is not a Deployment name", target_ref.name),
        ));
    }
    if spec.pool.trim().is_empty() {
        return Err(PolicyError::new(
            "spec.pool",
            "name the balancer pool whose metrics drive this policy",
        ));
    }
    if spec.min_replicas == 0 {
        return Err(PolicyError::new(
            "spec.minReplicas",
            "must be at least 1 (Usher never scales to zero)",
        ));
    }
    if spec.min_replicas > spec.max_replicas {
        return Err(PolicyError::new(
            "spec.minReplicas",
            format!(
                "minReplicas {} is greater than maxReplicas {}; make min at most max",
                spec.min_replicas, spec.max_replicas
            ),
        ));
    }
    let target = target(spec.target)?;
    let surge = surge(spec.surge.unwrap_or_default())?;
    let behavior = behavior(spec.behavior.unwrap_or_default())?;
    let schedules = spec
        .schedules
        .into_iter()
        .enumerate()
        .map(|(i, s)| schedule(s, i, spec.max_replicas))
        .collect::<Result<Vec<_>>>()?;
    let tolerance = spec.tolerance.unwrap_or(0.1);
    if !(0.0..1.0).contains(&tolerance) {
        return Err(PolicyError::new(
            "spec.tolerance",
            format!("{tolerance} is out of range; use 0 to 0.99 (0.1 = 10%)"),
        ));
    }
    let metrics = metrics_source(spec.metrics_source.unwrap_or_default())?;
    let predictive = spec
        .predictive
        .map(|p| predictive(p, &target))
        .transpose()?;
    Ok(Policy {
        name: doc.metadata.name,
        namespace: doc.metadata.namespace,
        target_ref,
        pool: spec.pool,
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        target,
        surge,
        behavior,
        schedules,
        tolerance,
        metrics,
        predictive,
    })
}

fn predictive(raw: RawPredictive, target: &Target) -> Result<Predictive> {
    let field = "spec.predictive";
    if matches!(target, Target::LatencyP95(_)) {
        return Err(PolicyError::new(
            field,
            "forecasts need a demand target; use `inFlightPerPod` or `requestsPerSecondPerPod`",
        ));
    }
    let lead_time = optional_duration(raw.lead_time, &format!("{field}.leadTime"))?
        .unwrap_or(Duration::from_secs(600));
    if lead_time > Duration::from_secs(24 * 3600) {
        return Err(PolicyError::new(
            format!("{field}.leadTime"),
            "must be at most 24h",
        ));
    }
    let weeks = raw.weeks.unwrap_or(2);
    if !(1..=8).contains(&weeks) {
        return Err(PolicyError::new(
            format!("{field}.weeks"),
            format!("{weeks} is out of range; use 1 to 8"),
        ));
    }
    let margin = raw.margin.unwrap_or(0.1);
    if !(0.0..=5.0).contains(&margin) {
        return Err(PolicyError::new(
            format!("{field}.margin"),
            format!("{margin} is out of range; use 0 to 5 (0.2 = 20%)"),
        ));
    }
    if let Some(u) = &raw.prometheus_url {
        http_url(u, &format!("{field}.prometheusUrl"))?;
    }
    Ok(Predictive {
        lead_time,
        weeks,
        margin,
        forecast_only: raw.forecast_only.unwrap_or(false),
        prometheus_url: raw
            .prometheus_url
            .map(|u| u.trim_end_matches('/').to_string()),
    })
}

fn metrics_source(raw: RawMetricsSource) -> Result<MetricsSource> {
    let field = "spec.metricsSource";
    let given = [
        raw.pods.is_some(),
        raw.urls.is_some(),
        raw.prometheus.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err(PolicyError::new(
            field,
            "give only one of `pods`, `urls` and `prometheus`",
        ));
    }
    let kind = if let Some(urls) = raw.urls {
        if urls.is_empty() {
            return Err(PolicyError::new(
                format!("{field}.urls"),
                "list at least one balancer `/metrics` URL",
            ));
        }
        for (i, u) in urls.iter().enumerate() {
            http_url(u, &format!("{field}.urls[{i}]"))?;
        }
        SourceKind::Urls(urls)
    } else if let Some(p) = raw.prometheus {
        http_url(&p.url, &format!("{field}.prometheus.url"))?;
        SourceKind::Prometheus {
            url: p.url.trim_end_matches('/').to_string(),
            matchers: p.matchers.filter(|m| !m.trim().is_empty()),
        }
    } else {
        let pods = raw.pods.unwrap_or_default();
        let selector = pods.selector.unwrap_or_else(|| {
            DEFAULT_BALANCER_SELECTOR
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        if selector.is_empty() {
            return Err(PolicyError::new(
                format!("{field}.pods.selector"),
                "an empty selector would match every pod; name the balancer pods' labels",
            ));
        }
        let path = pods.path.unwrap_or_else(|| "/metrics".to_string());
        if !path.starts_with('/') {
            return Err(PolicyError::new(
                format!("{field}.pods.path"),
                format!("`{path}` must start with `/`"),
            ));
        }
        let port = pods.port.unwrap_or(DEFAULT_ADMIN_PORT);
        if port == 0 {
            return Err(PolicyError::new(
                format!("{field}.pods.port"),
                "0 is not a port; give the balancer's admin port",
            ));
        }
        SourceKind::Pods {
            selector,
            namespace: pods.namespace,
            port,
            path,
        }
    };
    let interval = optional_duration(raw.interval, &format!("{field}.interval"))?
        .unwrap_or(Duration::from_secs(1));
    if interval < Duration::from_millis(100) {
        return Err(PolicyError::new(
            format!("{field}.interval"),
            "must be at least 100ms",
        ));
    }
    let stale_after = optional_duration(raw.stale_after, &format!("{field}.staleAfter"))?
        .unwrap_or((interval * 5).max(Duration::from_secs(5)));
    if stale_after < interval {
        return Err(PolicyError::new(
            format!("{field}.staleAfter"),
            "must be at least the interval",
        ));
    }
    let timeout = optional_duration(raw.timeout, &format!("{field}.timeout"))?
        .unwrap_or_else(|| (interval * 4 / 5).min(Duration::from_secs(5)));
    Ok(MetricsSource {
        kind,
        interval,
        stale_after,
        timeout,
    })
}

fn http_url(u: &str, field: &str) -> Result<()> {
    match u.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => Ok(()),
        Ok(_) => Err(PolicyError::new(
            field,
            format!("`{u}` is not an http:// URL with a host"),
        )),
        Err(e) => Err(PolicyError::new(field, format!("`{u}` is not a URL: {e}"))),
    }
}

fn optional_duration(raw: Option<String>, field: &str) -> Result<Option<Duration>> {
    raw.map(|d| duration(&d, field)).transpose()
}

fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn duration(text: &str, at: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        PolicyError::new(
            at,
            format!("`{text}` is not a duration; write it like `6s`, `2m` or `1h30m`"),
        )
    })?;
    if d.is_zero() {
        return Err(PolicyError::new(at, "must be longer than zero"));
    }
    Ok(d)
}

fn target(t: RawTarget) -> Result<Target> {
    let given = [
        t.in_flight_per_pod.is_some(),
        t.requests_per_second_per_pod.is_some(),
        t.latency.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(PolicyError::new(
            "spec.target",
            "give exactly one of `inFlightPerPod`, `requestsPerSecondPerPod` or `latency: {p95: ...}`",
        ));
    }
    let positive = |v: f64, at: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(PolicyError::new(
                at,
                format!("{v} must be a number above 0"),
            ))
        }
    };
    if let Some(v) = t.in_flight_per_pod {
        return Ok(Target::InFlightPerPod(positive(
            v,
            "spec.target.inFlightPerPod",
        )?));
    }
    if let Some(v) = t.requests_per_second_per_pod {
        return Ok(Target::RequestsPerSecondPerPod(positive(
            v,
            "spec.target.requestsPerSecondPerPod",
        )?));
    }
    let latency = t.latency.expect("one target is set");
    Ok(Target::LatencyP95(duration(
        &latency.p95,
        "spec.target.latency.p95",
    )?))
}

fn surge(s: RawSurge) -> Result<Surge> {
    let d = Surge::default();
    let stable_window = s
        .stable_window
        .as_deref()
        .map(|w| duration(w, "spec.surge.stableWindow"))
        .transpose()?
        .unwrap_or(d.stable_window);
    let panic_window = s
        .panic_window
        .as_deref()
        .map(|w| duration(w, "spec.surge.panicWindow"))
        .transpose()?
        .unwrap_or(stable_window / 10);
    if panic_window > stable_window {
        return Err(PolicyError::new(
            "spec.surge.panicWindow",
            "longer than the stable window; the panic window must be the shorter one (Knative uses 10%)",
        ));
    }
    let panic_threshold = s.panic_threshold.unwrap_or(d.panic_threshold);
    if !(panic_threshold.is_finite() && panic_threshold > 1.0) {
        return Err(PolicyError::new(
            "spec.surge.panicThreshold",
            format!("{panic_threshold} must be above 1.0 (2.0 = panic at twice the ready pods)"),
        ));
    }
    Ok(Surge {
        panic_window,
        stable_window,
        panic_threshold,
    })
}

fn behavior(b: RawBehavior) -> Result<Behavior> {
    let d = Behavior::default();
    Ok(Behavior {
        scale_up: rules(b.scale_up, d.scale_up, "spec.behavior.scaleUp")?,
        scale_down: rules(b.scale_down, d.scale_down, "spec.behavior.scaleDown")?,
    })
}

fn rules(raw: Option<RawRules>, default: Rules, at: &str) -> Result<Rules> {
    let Some(raw) = raw else { return Ok(default) };
    let stabilization = match raw.stabilization_window_seconds {
        None => default.stabilization,
        Some(s) if s > 3600 => {
            return Err(PolicyError::new(
                format!("{at}.stabilizationWindowSeconds"),
                format!("{s} is over 3600 (one hour), the HPA's limit"),
            ));
        }
        Some(s) => Duration::from_secs(u64::from(s)),
    };
    let select = match raw.select_policy.as_deref() {
        None | Some("Max") => Select::Max,
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        Some(other) => {
            return Err(PolicyError::new(
                format!("{at}.selectPolicy"),
                format!("`{other}` is not `Max`, `Min` or `Disabled`"),
            ));
        }
    };
    let policies = match raw.policies {
        None => default.policies,
        Some(list) => {
            if list.is_empty() && select != Select::Disabled {
                return Err(PolicyError::new(
                    format!("{at}.policies"),
                    "an empty list allows no change; remove it for the defaults or set `selectPolicy: Disabled`",
                ));
            }
            list.into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let pat = format!("{at}.policies[{i}]");
                    let kind = match p.kind.as_str() {
                        "Pods" => RateKind::Pods,
                        "Percent" => RateKind::Percent,
                        other => {
                            return Err(PolicyError::new(
                                format!("{pat}.type"),
                                format!("`{other}` is not `Pods` or `Percent`"),
                            ));
                        }
                    };
                    if p.value == 0 {
                        return Err(PolicyError::new(
                            format!("{pat}.value"),
                            "must be at least 1",
                        ));
                    }
                    if p.period_seconds == 0 || p.period_seconds > 1800 {
                        return Err(PolicyError::new(
                            format!("{pat}.periodSeconds"),
                            format!(
                                "{} is out of range; use 1 to 1800 (the HPA's limits)",
                                p.period_seconds
                            ),
                        ));
                    }
                    Ok(RatePolicy {
                        kind,
                        value: p.value,
                        period: Duration::from_secs(u64::from(p.period_seconds)),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(Rules {
        stabilization,
        select,
        policies,
    })
}

fn schedule(s: RawSchedule, i: usize, max_replicas: u32) -> Result<Schedule> {
    let at = format!("spec.schedules[{i}]");
    let fields = s.cron.split_whitespace().count();
    if fields != 5 {
        return Err(PolicyError::new(
            format!("{at}.cron"),
            format!(
                "`{}` has {fields} fields; write 5: minute hour day-of-month month day-of-week, e.g. `50 8 * * 1-5`",
                s.cron
            ),
        ));
    }
    let cron = croner::Cron::from_str(&s.cron).map_err(|e| {
        PolicyError::new(
            format!("{at}.cron"),
            format!("`{}` is not a valid cron expression: {e}", s.cron),
        )
    })?;
    let zone_name = s.time_zone.unwrap_or_else(|| "UTC".to_string());
    let time_zone: chrono_tz::Tz = zone_name.parse().map_err(|_| {
        PolicyError::new(
            format!("{at}.timeZone"),
            format!("`{zone_name}` is not an IANA time zone; write it like `Europe/Berlin` or `America/New_York`"),
        )
    })?;
    let duration = duration(&s.duration, &format!("{at}.duration"))?;
    if s.min_replicas > max_replicas {
        return Err(PolicyError::new(
            format!("{at}.minReplicas"),
            format!(
                "{} is above maxReplicas {max_replicas}; raise maxReplicas or lower the floor",
                s.min_replicas
            ),
        ));
    }
    Ok(Schedule {
        name: s.name.unwrap_or_else(|| format!("schedule {i}")),
        pattern: s.cron,
        cron,
        time_zone,
        duration,
        min_replicas: s.min_replicas,
    })
}
