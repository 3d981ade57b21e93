//! One test per rejection in `validate.rs`, the serde-level errors, and the
//! values a valid file turns into.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Balance, Config, ConfigError, DEFAULT_WEIGHT, EndpointSpec, HostMatch, from_str, load,
};

const FILE: &str = "/etc/usher/balancer.yaml";

const LISTENERS: &str = "listeners:\n  - name: public\n    bind: \"127.0.0.1:8080\"\n";
const ROUTES: &str = "routes:\n  - pool: web\n";
const POOLS: &str = "pools:\n  web:\n    endpoints:\n      static:\n        - \"127.0.0.1:9001\"\n        - \"127.0.0.1:9002\"\n";

/// A config file assembled from sections; the default is valid.
struct Doc {
    listeners: String,
    admin: String,
    shutdown: String,
    routes: String,
    pools: String,
}

impl Default for Doc {
    fn default() -> Self {
        Self {
            listeners: LISTENERS.to_string(),
            admin: String::new(),
            shutdown: String::new(),
            routes: ROUTES.to_string(),
            pools: POOLS.to_string(),
        }
    }
}

impl Doc {
    fn text(&self) -> String {
        format!(
            "{}{}{}{}{}",
            self.listeners, self.admin, self.shutdown, self.routes, self.pools
        )
    }
}

/// The default document with extra keys for pool `web` (indented 4 spaces).
fn pool(extra: &str) -> String {
    Doc {
        pools: format!("{POOLS}{extra}"),
        ..Doc::default()
    }
    .text()
}

/// The default document with extra keys for the first listener (indented 4 spaces).
fn listener(extra: &str) -> String {
    Doc {
        listeners: format!("{LISTENERS}{extra}"),
        ..Doc::default()
    }
    .text()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_str(text, Path::new(FILE))
}

/// Asserts that `text` is rejected at `field` with a problem containing `part`.
#[track_caller]
fn rejects(text: &str, field: &str, part: &str) -> ConfigError {
    let e = match parse(text) {
        Ok(_) => panic!("accepted, expected an error at `{field}`:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.field, field, "wrong field for {e}");
    assert!(
        e.problem.contains(part),
        "problem {:?} lacks {part:?}",
        e.problem
    );
    assert_eq!(e.file, Path::new(FILE));
    e
}

// ---------------------------------------------------------------- valid files

#[test]
fn example_file_is_valid_and_means_what_it_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/balancer.yaml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, path);
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.name, "public");
    assert_eq!(l.bind, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(l.tls.is_none());
    assert_eq!(l.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(l.limits.max_header_bytes, 64 * 1024);
    assert_eq!(l.limits.max_body_bytes, 256 * 1024 * 1024);
    let admin = c.admin.as_ref().unwrap();
    assert_eq!(admin.bind, "127.0.0.1:9901".parse::<SocketAddr>().unwrap());
    assert_eq!(admin.token, None);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.shutdown.delay, Duration::ZERO);

    assert_eq!(c.routes.len(), 3);
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Suffix(".example.edu".into()))
    );
    assert_eq!(c.routes[0].path_prefix, "/webservice/");
    let limit = c.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_second, limit.burst), (50.0, 100.0));
    assert_eq!(c.routes[1].path_prefix, "/login/");
    let cache = c.routes[1].cache.as_ref().unwrap();
    assert_eq!(
        (cache.ttl, cache.max_entries, cache.max_body_bytes),
        (Duration::from_secs(1), 10_000, 1 << 20)
    );
    assert_eq!(cache.session_cookies, ["MoodleSession"]);
    assert_eq!(c.routes[2].host, None);
    assert_eq!(c.routes[2].path_prefix, "/");
    assert!(c.routes[2].rate_limit.is_none() && c.routes[2].cache.is_none());
    assert!(c.routes.iter().all(|r| r.pool == "moodle"));
    assert!(c.trusted_proxies.is_empty());

    let p = &c.pools["moodle"];
    assert_eq!(p.balance, Balance::LeastConnections);
    assert_eq!(
        p.endpoints,
        vec![
            EndpointSpec {
                address: "127.0.0.1:9001".into(),
                weight: DEFAULT_WEIGHT,
                draining: false,
                starting: false,
            },
            EndpointSpec {
                address: "127.0.0.1:9002".into(),
                weight: DEFAULT_WEIGHT,
                draining: false,
                starting: false,
            },
            EndpointSpec {
                address: "127.0.0.1:9003".into(),
                weight: 200,
                draining: false,
                starting: false,
            },
        ]
    );
    let h = p.health_check.as_ref().unwrap();
    assert_eq!(
        (h.path.as_str(), h.interval, h.timeout, h.rise, h.fall),
        (
            "/healthz",
            Duration::from_secs(2),
            Duration::from_secs(1),
            2,
            3
        )
    );
    assert_eq!(h.expect_status, 200..=399);
    assert_eq!(h.host, None);
    let o = &p.outlier_detection;
    assert!(o.enabled);
    assert_eq!(
        (
            o.consecutive_5xx,
            o.base_ejection_time,
            o.max_ejection_time,
            o.max_ejection_percent
        ),
        (5, Duration::from_secs(30), Duration::from_secs(300), 10)
    );
    assert_eq!(
        (
            p.retries.attempts,
            p.retries.budget_percent,
            p.retries.min_concurrency
        ),
        (2, 20, 3)
    );
    assert_eq!(
        (p.timeouts.connect, p.timeouts.response, p.timeouts.idle),
        (
            Duration::from_secs(2),
            Duration::from_secs(60),
            Duration::from_secs(4)
        )
    );
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let c = parse(&Doc::default().text()).unwrap();
    assert!(c.admin.is_none());
    assert_eq!(c.shutdown, super::Shutdown::default());
    assert_eq!(c.listeners[0].limits, super::Limits::default());
    assert_eq!(c.routes[0].path_prefix, "/");
    let p = &c.pools["web"];
    assert_eq!(p.balance, Balance::LeastConnections);
    assert!(p.health_check.is_none());
    assert_eq!(p.outlier_detection, super::OutlierDetection::default());
    assert_eq!(p.retries, super::Retries::default());
    assert_eq!(p.timeouts, super::Timeouts::default());
    assert!(p.endpoints.iter().all(|e| e.weight == DEFAULT_WEIGHT));
}

#[test]
fn accepted_edge_values() {
    // Two listeners on port 0 are not a clash; a zero shutdown delay is allowed;
    // host names are lower-cased; a single status code and a range both work.
    let text = Doc {
        listeners: "listeners:\n  - {name: a, bind: \"127.0.0.1:0\"}\n  - {name: b, bind: \"127.0.0.1:0\"}\n".into(),
        admin: "admin:\n  bind: \"127.0.0.1:0\"\n".into(),
        shutdown: "shutdown:\n  delay: 0s\n  drainTimeout: 500ms\n".into(),
        routes: "routes:\n  - {host: LMS.Example.EDU, pool: web}\n  - {host: \"*.example.edu\", pathPrefix: /api/, pool: web}\n".into(),
        pools: format!("{POOLS}    balance: powerOfTwoChoices\n    healthCheck:\n      expectStatus: 204\n    retries:\n      attempts: 0\n"),
    }
    .text();
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.shutdown.delay, Duration::ZERO);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_millis(500));
    assert_eq!(
        c.routes[0].host,
        Some(HostMatch::Exact("lms.example.edu".into()))
    );
    assert!(
        c.routes[1]
            .host
            .as_ref()
            .unwrap()
            .matches("moodle.example.edu")
    );
    assert!(!c.routes[1].host.as_ref().unwrap().matches("example.edu"));
    let p = &c.pools["web"];
    assert_eq!(p.balance, Balance::PowerOfTwoChoices);
    assert_eq!(p.health_check.as_ref().unwrap().expect_status, 204..=204);
    assert_eq!(p.retries.attempts, 0);
}

// ---------------------------------------------------------------- listeners

#[test]
fn rejects_no_listeners() {
    rejects(
        &Doc {
            listeners: "listeners: []\n".into(),
            ..Doc::default()
        }
        .text(),
        "listeners",
        "no listeners",
    );
}

#[test]
fn rejects_an_empty_listener_name() {
    let text = Doc {
        listeners: "listeners:\n  - name: \"  \"\n    bind: \"127.0.0.1:8080\"\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "listeners[0].name", "the name is empty");
}

#[test]
fn rejects_a_listener_name_used_twice() {
    let text = Doc {
        listeners: "listeners:\n  - {name: public, bind: \"127.0.0.1:8080\"}\n  - {name: public, bind: \"127.0.0.1:8081\"}\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "listeners[1].name",
        "listener name `public` is used twice",
    );
}

#[test]
fn rejects_a_bind_that_is_not_ip_port() {
    let text = Doc {
        listeners: "listeners:\n  - {name: public, bind: \"localhost:8080\"}\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "listeners[0].bind",
        "`localhost:8080` is not an `ip:port` address",
    );
}

#[test]
fn rejects_two_listeners_on_one_address() {
    let text = Doc {
        listeners: "listeners:\n  - {name: a, bind: \"127.0.0.1:8080\"}\n  - {name: b, bind: \"127.0.0.1:8080\"}\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "listeners[1].bind", "is bound by another listener");
}

#[test]
fn rejects_tls_without_certificates() {
    rejects(
        &listener("    tls:\n      certificates: []\n"),
        "listeners[0].tls.certificates",
        "no certificates",
    );
}

#[test]
fn rejects_a_missing_certificate_file_relative_to_the_config() {
    let text = listener(
        "    tls:\n      certificates:\n        - {certFile: certs/missing.pem, keyFile: certs/missing.key}\n",
    );
    let e = rejects(
        &text,
        "listeners[0].tls.certificates[0].certFile",
        "cannot read",
    );
    // Relative paths are anchored at the config file's directory.
    assert!(e.problem.contains("/etc/usher/certs/missing.pem"), "{e}");
}

/// A directory with `a.pem`/`a.key` (lms.example.edu) and `b.pem`/`b.key` (other.example.edu).
fn cert_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, host) in [("a", "LMS.example.edu"), ("b", "other.example.edu")] {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), ck.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.key")),
            ck.signing_key.serialize_pem(),
        )
        .unwrap();
    }
    dir
}

fn in_dir(dir: &tempfile::TempDir, text: &str) -> (PathBuf, Result<Config, ConfigError>) {
    let path = dir.path().join("balancer.yaml");
    let result = from_str(text, &path);
    (path, result)
}

#[test]
fn certificates_load_relative_to_the_config_and_name_themselves() {
    let dir = cert_dir();
    let (_, c) = in_dir(
        &dir,
        &listener("    tls:\n      certificates:\n        - {certFile: a.pem, keyFile: a.key}\n"),
    );
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    let cert = &c.listeners[0].tls.as_ref().unwrap().certificates[0];
    assert_eq!(cert.cert_file, dir.path().join("a.pem"));
    assert_eq!(cert.server_names, vec!["lms.example.edu".to_string()]);
}

#[test]
fn rejects_a_key_that_does_not_match_its_certificate() {
    let dir = cert_dir();
    let (path, result) = in_dir(
        &dir,
        &listener("    tls:\n      certificates:\n        - {certFile: a.pem, keyFile: b.key}\n"),
    );
    let e = result.unwrap_err();
    assert_eq!(e.file, path);
    assert_eq!(e.field, "listeners[0].tls.certificates[0].keyFile");
    assert!(e.problem.contains("does not match the certificate"), "{e}");
}

#[test]
fn rejects_an_empty_server_names_list() {
    let dir = cert_dir();
    let (_, result) = in_dir(
        &dir,
        &listener(
            "    tls:\n      certificates:\n        - {certFile: a.pem, keyFile: a.key, serverNames: []}\n",
        ),
    );
    let e = result.unwrap_err();
    assert_eq!(e.field, "listeners[0].tls.certificates[0].serverNames");
    assert!(e.problem.contains("the list is empty"), "{e}");
}

#[test]
fn rejects_max_header_bytes_out_of_range() {
    rejects(
        &listener("    limits:\n      maxHeaderBytes: 4KiB\n"),
        "listeners[0].limits.maxHeaderBytes",
        "4KiB is out of range; use 8KiB to 1MiB",
    );
    rejects(
        &listener("    limits:\n      maxHeaderBytes: 2MiB\n"),
        "listeners[0].limits.maxHeaderBytes",
        "out of range",
    );
}

#[test]
fn rejects_a_zero_or_unparsable_body_limit() {
    rejects(
        &listener("    limits:\n      maxBodyBytes: 0\n"),
        "listeners[0].limits.maxBodyBytes",
        "must be more than zero",
    );
    rejects(
        &listener("    limits:\n      maxBodyBytes: 10 parsecs\n"),
        "listeners[0].limits.maxBodyBytes",
        "`10 parsecs` is not a size",
    );
}

#[test]
fn rejects_a_zero_header_read_timeout() {
    rejects(
        &listener("    limits:\n      headerReadTimeout: 0s\n"),
        "listeners[0].limits.headerReadTimeout",
        "must be longer than zero",
    );
}

// ---------------------------------------------------------------- admin and shutdown

#[test]
fn rejects_an_admin_bind_that_is_not_ip_port() {
    let text = Doc {
        admin: "admin:\n  bind: \":9901\"\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "admin.bind", "is not an `ip:port` address");
}

#[test]
fn rejects_an_admin_bind_equal_to_a_listener() {
    let text = Doc {
        admin: "admin:\n  bind: \"127.0.0.1:8080\"\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "admin.bind", "is also a listener's address");
}

#[test]
fn rejects_an_empty_admin_token() {
    let text = Doc {
        admin: "admin:\n  bind: \"127.0.0.1:9901\"\n  token: \" \"\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "admin.token", "the token is empty");
}

#[test]
fn rejects_a_zero_drain_timeout() {
    let text = Doc {
        shutdown: "shutdown:\n  drainTimeout: 0s\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "shutdown.drainTimeout", "must be longer than zero");
}

#[test]
fn rejects_a_bad_shutdown_delay() {
    let text = Doc {
        shutdown: "shutdown:\n  delay: soon\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "shutdown.delay", "`soon` is not a duration");
    let text = Doc {
        shutdown: "shutdown:\n  delay: \"5\"\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "shutdown.delay", "has no unit");
}

// ---------------------------------------------------------------- pools and routes

#[test]
fn rejects_no_pools() {
    rejects(
        &Doc {
            pools: "pools: {}\n".into(),
            ..Doc::default()
        }
        .text(),
        "pools",
        "no pools",
    );
}

#[test]
fn rejects_a_pool_name_with_odd_characters() {
    let text = Doc {
        routes: "routes:\n  - pool: web app\n".into(),
        pools: "pools:\n  web app:\n    endpoints:\n      static: [\"127.0.0.1:9001\"]\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "pools.web app", "may use only letters, digits");
}

#[test]
fn rejects_no_routes() {
    rejects(
        &Doc {
            routes: "routes: []\n".into(),
            ..Doc::default()
        }
        .text(),
        "routes",
        "no routes",
    );
}

#[test]
fn rejects_a_route_to_a_missing_pool() {
    let text = Doc {
        routes: "routes:\n  - pool: web\n  - pool: moodle\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "routes[1].pool",
        "no pool named `moodle`; defined pools: web",
    );
}

#[test]
fn rejects_a_route_host_with_scheme_or_port() {
    for host in ["https://lms.example.edu", "lms.example.edu:443", "*.", ""] {
        let text = Doc {
            routes: format!("routes:\n  - host: \"{host}\"\n    pool: web\n"),
            ..Doc::default()
        }
        .text();
        rejects(&text, "routes[0].host", "is not a host name");
    }
}

#[test]
fn rejects_a_relative_path_prefix() {
    let text = Doc {
        routes: "routes:\n  - pathPrefix: course/\n    pool: web\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "routes[0].pathPrefix",
        "`course/` must start with `/`",
    );
}

#[test]
fn rejects_an_unknown_balance_algorithm() {
    rejects(
        &pool("    balance: roundRobin\n"),
        "pools.web.balance",
        "unknown algorithm `roundRobin`",
    );
}

#[test]
fn rejects_a_pool_without_endpoints() {
    let text = Doc {
        pools: "pools:\n  web:\n    endpoints:\n      static: []\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "pools.web.endpoints", "the pool has no endpoints");
    let text = Doc {
        pools: "pools:\n  web:\n    endpoints: {}\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "pools.web.endpoints", "the pool has no endpoints");
}

#[test]
fn rejects_an_endpoint_listed_twice() {
    let text = Doc {
        pools: "pools:\n  web:\n    endpoints:\n      static:\n        - \"127.0.0.1:9001\"\n        - address: \"127.0.0.1:9001\"\n          weight: 300\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "pools.web.endpoints.static[1]",
        "`127.0.0.1:9001` is listed twice",
    );
}

#[test]
fn rejects_an_endpoint_that_is_not_host_port() {
    for address in [
        "10.0.0.5",
        "moodle:0",
        "127.0.0.1:0",
        "[::1]:0",
        ":8080",
        "moodle:http",
        "http://moodle:80",
        "moodle_0:80",
    ] {
        let text = Doc {
            pools: format!("pools:\n  web:\n    endpoints:\n      static: [\"{address}\"]\n"),
            ..Doc::default()
        }
        .text();
        rejects(
            &text,
            "pools.web.endpoints.static[0]",
            &format!("`{address}` is not `host:port`"),
        );
    }
    // Names and IPv6 literals are fine.
    let text = Doc { pools: "pools:\n  web:\n    endpoints:\n      static: [\"moodle-0.moodle:80\", \"[::1]:8080\"]\n".into(), ..Doc::default() }.text();
    parse(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn rejects_an_endpoint_object_with_a_bad_address() {
    let text = Doc {
        pools: "pools:\n  web:\n    endpoints:\n      static:\n        - address: \"moodle\"\n"
            .into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "pools.web.endpoints.static[0].address",
        "`moodle` is not `host:port`",
    );
}

#[test]
fn rejects_a_weight_out_of_range() {
    for weight in [0, 1001] {
        let text = Doc {
            pools: format!("pools:\n  web:\n    endpoints:\n      static:\n        - address: \"127.0.0.1:9001\"\n          weight: {weight}\n"),
            ..Doc::default()
        }
        .text();
        rejects(
            &text,
            "pools.web.endpoints.static[0].weight",
            &format!("weight {weight} is out of range; use 1 to 1000"),
        );
    }
}

#[test]
fn rejects_a_relative_health_check_path() {
    rejects(
        &pool("    healthCheck:\n      path: healthz\n"),
        "pools.web.healthCheck.path",
        "`healthz` must start with `/`",
    );
}

#[test]
fn rejects_a_zero_or_unitless_health_check_interval() {
    rejects(
        &pool("    healthCheck:\n      interval: 0s\n"),
        "pools.web.healthCheck.interval",
        "must be longer than zero",
    );
    rejects(
        &pool("    healthCheck:\n      interval: \"5\"\n"),
        "pools.web.healthCheck.interval",
        "`5` has no unit",
    );
}

#[test]
fn rejects_a_health_check_timeout_longer_than_the_interval() {
    rejects(
        &pool("    healthCheck:\n      interval: 1s\n      timeout: 2s\n"),
        "pools.web.healthCheck.timeout",
        "timeout 2s is longer than the interval 1s",
    );
}

#[test]
fn rejects_zero_rise_or_fall() {
    rejects(
        &pool("    healthCheck:\n      rise: 0\n"),
        "pools.web.healthCheck.rise",
        "0 is out of range; use 1 to 100",
    );
    rejects(
        &pool("    healthCheck:\n      fall: 0\n"),
        "pools.web.healthCheck.fall",
        "0 is out of range; use 1 to 100",
    );
}

#[test]
fn rejects_an_expected_status_that_is_not_http() {
    rejects(
        &pool("    healthCheck:\n      expectStatus: 99\n"),
        "pools.web.healthCheck.expectStatus",
        "99 is not an HTTP status",
    );
    rejects(
        &pool("    healthCheck:\n      expectStatus: \"200-700\"\n"),
        "pools.web.healthCheck.expectStatus",
        "700 is not an HTTP status",
    );
}

#[test]
fn rejects_a_malformed_status_range() {
    for range in ["ok", "200-", "399-200", "200..399"] {
        rejects(
            &pool(&format!(
                "    healthCheck:\n      expectStatus: \"{range}\"\n"
            )),
            "pools.web.healthCheck.expectStatus",
            &format!("`{range}` is not a status range"),
        );
    }
}

#[test]
fn rejects_a_max_ejection_time_below_the_base() {
    rejects(
        &pool("    outlierDetection:\n      baseEjectionTime: 60s\n      maxEjectionTime: 30s\n"),
        "pools.web.outlierDetection.maxEjectionTime",
        "shorter than baseEjectionTime",
    );
}

#[test]
fn rejects_a_bad_base_ejection_time() {
    rejects(
        &pool("    outlierDetection:\n      baseEjectionTime: 0ms\n"),
        "pools.web.outlierDetection.baseEjectionTime",
        "must be longer than zero",
    );
}

#[test]
fn rejects_a_max_ejection_percent_over_100() {
    rejects(
        &pool("    outlierDetection:\n      maxEjectionPercent: 101\n"),
        "pools.web.outlierDetection.maxEjectionPercent",
        "101 is over 100",
    );
}

#[test]
fn rejects_zero_consecutive_failures() {
    rejects(
        &pool("    outlierDetection:\n      consecutive5xx: 0\n"),
        "pools.web.outlierDetection.consecutive5xx",
        "0 is out of range; use 1 to 10000",
    );
}

#[test]
fn rejects_too_many_retries() {
    rejects(
        &pool("    retries:\n      attempts: 6\n"),
        "pools.web.retries.attempts",
        "6 retries is too many; use 0 to 5",
    );
}

#[test]
fn rejects_a_retry_budget_over_100() {
    rejects(
        &pool("    retries:\n      budgetPercent: 150\n"),
        "pools.web.retries.budgetPercent",
        "150 is over 100",
    );
}

#[test]
fn rejects_zero_or_bad_upstream_timeouts() {
    rejects(
        &pool("    timeouts:\n      connect: 0s\n"),
        "pools.web.timeouts.connect",
        "must be longer than zero",
    );
    rejects(
        &pool("    timeouts:\n      response: forever\n"),
        "pools.web.timeouts.response",
        "`forever` is not a duration",
    );
    rejects(
        &pool("    timeouts:\n      idle: \"4\"\n"),
        "pools.web.timeouts.idle",
        "has no unit",
    );
}

// ---------------------------------------------------------------- serde-level errors

#[test]
fn an_unknown_field_names_its_path() {
    let e = rejects(
        &pool("    healthCheck:\n      intervall: 2s\n"),
        "pools.web.healthCheck.intervall",
        "unknown field `intervall`",
    );
    assert!(
        e.problem.contains("interval"),
        "the known fields are listed: {e}"
    );
    rejects(
        &listener("    limitz: {}\n"),
        "listeners[0].limitz",
        "unknown field `limitz`",
    );
    rejects(
        &format!("listenerz: []\n{}", Doc::default().text()),
        "listenerz",
        "unknown field `listenerz`",
    );
    rejects(
        &pool("    outlierDetection:\n      consecutive5XX: 3\n"),
        "pools.web.outlierDetection.consecutive5XX",
        "unknown field",
    );
}

#[test]
fn a_wrong_type_names_its_path() {
    // The YAML position of the bad value is part of the message.
    let e = rejects(
        &pool("    retries:\n      attempts: many\n"),
        "pools.web.retries.attempts",
        "invalid u32",
    );
    assert!(e.problem.contains("line 13 column 17"), "{e}");
    let e = rejects(
        &pool("    outlierDetection:\n      enabled: sometimes\n"),
        "pools.web.outlierDetection.enabled",
        "invalid boolean",
    );
    assert!(e.problem.contains("line 13"), "{e}");
    rejects(
        &pool("    retries:\n      attempts: -1\n"),
        "pools.web.retries.attempts",
        "invalid u32",
    );
    rejects(
        &pool("    healthCheck:\n      expectStatus: [200]\n"),
        "pools.web.healthCheck.expectStatus",
        "a status code such as 200",
    );
    // Endpoints are untagged (string or object): the error names the entry.
    let text = Doc {
        pools: "pools:\n  web:\n    endpoints:\n      static:\n        - address: \"127.0.0.1:9001\"\n          weight: heavy\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(
        &text,
        "pools.web.endpoints.static[0]",
        "a `host:port` string or an object {address, weight}",
    );
}

#[test]
fn a_bad_size_names_its_path() {
    rejects(
        &listener("    limits:\n      maxBodyBytes: true\n"),
        "listeners[0].limits.maxBodyBytes",
        "a number of bytes or a size such as 64KiB",
    );
    rejects(
        &listener("    limits:\n      maxHeaderBytes: 64 KiBs\n"),
        "listeners[0].limits.maxHeaderBytes",
        "`64 KiBs` is not a size",
    );
}

#[test]
fn a_bad_duration_names_its_path() {
    rejects(
        &pool("    healthCheck:\n      interval: every two seconds\n"),
        "pools.web.healthCheck.interval",
        "`every two seconds` is not a duration",
    );
    rejects(
        &listener("    limits:\n      headerReadTimeout: 10\n"),
        "listeners[0].limits.headerReadTimeout",
        "`10` has no unit",
    );
}

#[test]
fn a_missing_required_field_names_its_parent() {
    let text = Doc {
        routes: "routes:\n  - pathPrefix: /\n".into(),
        ..Doc::default()
    }
    .text();
    rejects(&text, "routes[0]", "missing field `pool`");
    rejects(&format!("{ROUTES}{POOLS}"), "", "missing field `listeners`");
}

#[test]
fn malformed_yaml_reports_the_line() {
    let e = rejects("listeners: [\n", "listeners", "line 1");
    assert!(
        e.to_string()
            .starts_with("/etc/usher/balancer.yaml: field `listeners`: "),
        "{e}"
    );
    let e = parse("").unwrap_err();
    assert_eq!(e.field, "");
    assert!(
        e.to_string().starts_with("/etc/usher/balancer.yaml: "),
        "{e}"
    );
    assert!(!e.to_string().contains("field `"), "{e}");
}

#[test]
fn the_error_message_names_file_field_and_fix() {
    let e = rejects(
        &pool("    retries:\n      attempts: 9\n"),
        "pools.web.retries.attempts",
        "use 0 to 5",
    );
    assert_eq!(
        e.to_string(),
        "/etc/usher/balancer.yaml: field `pools.web.retries.attempts`: 9 retries is too many; use 0 to 5"
    );
}

#[test]
fn a_missing_file_is_an_error_without_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let e = load(&path).unwrap_err();
    assert_eq!(e.file, path);
    assert_eq!(e.field, "");
    assert!(e.problem.contains("cannot read the file"), "{e}");
}

// ------------------------------------------------------- peak-hour settings

#[test]
fn example_file_peak_hour_settings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/balancer.yaml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let p = &c.pools["moodle"];
    let sticky = p.sticky.as_ref().unwrap();
    assert_eq!(
        (sticky.cookie.as_str(), sticky.ttl),
        ("usher_affinity", Duration::from_secs(8 * 3600))
    );
    assert_eq!(
        (
            sticky.application_cookie.as_deref(),
            sticky.secret.as_deref()
        ),
        (None, None)
    );
    assert_eq!(p.drain_timeout, Duration::from_secs(30));
    let ss = p.slow_start.unwrap();
    assert_eq!(
        (ss.window, ss.aggression, ss.min_weight_fraction),
        (Duration::from_secs(30), 1.0, 0.1)
    );
    assert_eq!(p.max_in_flight_per_endpoint, Some(64));
    let q = p.queue.as_ref().unwrap();
    assert_eq!((q.max_length, q.timeout), (2000, Duration::from_secs(10)));
    assert_eq!(p.backup_pool.as_deref(), Some("maintenance"));
    assert_eq!(c.pools["maintenance"].endpoints.len(), 1);
    assert!(c.pools["maintenance"].sticky.is_none());
}

#[test]
fn peak_hour_defaults() {
    let c = parse(&pool(
        "    stickySessions: {}\n    slowStart: {window: 10s}\n    maxInFlightPerEndpoint: 8\n    queue: {maxLength: 50}\n",
    ))
    .unwrap();
    let p = &c.pools["web"];
    let s = p.sticky.as_ref().unwrap();
    assert_eq!(
        (s.cookie.as_str(), s.ttl),
        ("usher_affinity", Duration::from_secs(8 * 3600))
    );
    let ss = p.slow_start.unwrap();
    assert_eq!((ss.aggression, ss.min_weight_fraction), (1.0, 0.1));
    assert_eq!(p.queue.as_ref().unwrap().timeout, Duration::from_secs(10));
    assert_eq!(p.drain_timeout, Duration::from_secs(30));
    assert!(p.discovery == super::Discovery::default());
}

#[test]
fn rejects_bad_sticky_settings() {
    rejects(
        &pool("    stickySessions: {cookie: \"a b\"}\n"),
        "pools.web.stickySessions.cookie",
        "not a cookie name",
    );
    rejects(
        &pool("    stickySessions: {applicationCookie: MoodleSession, cookie: MoodleSession}\n"),
        "pools.web.stickySessions.cookie",
        "is the application's cookie",
    );
    rejects(
        &pool("    stickySessions: {secret: short}\n"),
        "pools.web.stickySessions.secret",
        "shorter than 16",
    );
    rejects(
        &pool("    stickySessions: {secret: aaaaaaaaaaaaaaaaaaaa, secretFile: s}\n"),
        "pools.web.stickySessions.secretFile",
        "not both",
    );
    rejects(
        &pool("    stickySessions: {secretFile: missing.txt}\n"),
        "pools.web.stickySessions.secretFile",
        "cannot read",
    );
    rejects(
        &pool("    stickySessions: {ttl: forever}\n"),
        "pools.web.stickySessions.ttl",
        "not a duration",
    );
}

#[test]
fn session_placement_and_mobility() {
    let c = parse(&pool("    stickySessions: {}\n")).unwrap();
    let s = c.pools["web"].sticky.clone().unwrap();
    assert_eq!(s.mobility, super::Mobility::Local);
    assert_eq!(s.placement, super::SessionPlacement::default());
    assert_eq!(s.placement.max_wait, Duration::from_secs(3));
    let c = parse(&pool(
        "    stickySessions: {mobility: shared, balanceFactor: 1.25, sessionPlacement: {maxWait: 0s, liveFor: 30m}}\n",
    ))
    .unwrap();
    let s = c.pools["web"].sticky.clone().unwrap();
    assert_eq!(
        (
            s.mobility,
            s.balance_factor,
            s.placement.max_wait,
            s.placement.live_for
        ),
        (
            super::Mobility::Shared,
            1.25,
            Duration::ZERO,
            Duration::from_secs(1800)
        )
    );
}

#[test]
fn rejects_bad_session_placement() {
    rejects(
        &pool("    stickySessions: {mobility: roaming}\n"),
        "pools.web.stickySessions.mobility",
        "use `local`",
    );
    rejects(
        &pool("    stickySessions: {balanceFactor: 1.5}\n"),
        "pools.web.stickySessions.balanceFactor",
        "only `mobility: shared`",
    );
    rejects(
        &pool("    stickySessions: {mobility: shared, balanceFactor: 1.0}\n"),
        "pools.web.stickySessions.balanceFactor",
        "use 1.05 to 10",
    );
    rejects(
        &pool("    stickySessions: {mobility: shared, balanceFactor: .nan}\n"),
        "pools.web.stickySessions.balanceFactor",
        "out of range",
    );
    rejects(
        &pool("    stickySessions: {sessionPlacement: {maxWait: 2h}}\n"),
        "pools.web.stickySessions.sessionPlacement.maxWait",
        "out of range",
    );
    rejects(
        &pool(
            "    stickySessions: {sessionPlacement: {maxWait: 5s}}\n    maxInFlightPerEndpoint: 2\n    queue: {maxLength: 10, timeout: 5s}\n",
        ),
        "pools.web.stickySessions.sessionPlacement.maxWait",
        "not below the queue timeout 5s",
    );
    rejects(
        &pool("    stickySessions: {sessionPlacement: {startingFor: 2h}}\n"),
        "pools.web.stickySessions.sessionPlacement.startingFor",
        "out of range",
    );
    rejects(
        &pool("    stickySessions: {sessionPlacement: {liveFor: 1s}}\n"),
        "pools.web.stickySessions.sessionPlacement.liveFor",
        "out of range",
    );
    rejects(
        &pool("    stickySessions: {sessionPlacement: {maxWiat: 1s}}\n"),
        "pools.web.stickySessions.sessionPlacement.maxWiat",
        "expected one of maxWait, liveFor, startingFor",
    );
}

#[test]
fn rejects_bad_slow_start() {
    rejects(
        &pool("    slowStart: {window: 0s}\n"),
        "pools.web.slowStart.window",
        "longer than zero",
    );
    rejects(
        &pool("    slowStart: {window: 5s, aggression: 0}\n"),
        "pools.web.slowStart.aggression",
        "0 is out of range; use 0.01 to 100",
    );
    rejects(
        &pool("    slowStart: {window: 5s, minWeightPercent: 120}\n"),
        "pools.web.slowStart.minWeightPercent",
        "0 to 100",
    );
}

#[test]
fn rejects_bad_admission_settings() {
    rejects(
        &pool("    maxInFlightPerEndpoint: 0\n"),
        "pools.web.maxInFlightPerEndpoint",
        "0 is out of range; use 1 to 1000000",
    );
    rejects(
        &pool("    queue: {maxLength: 10}\n"),
        "pools.web.queue",
        "needs `maxInFlightPerEndpoint`",
    );
    rejects(
        &pool("    maxInFlightPerEndpoint: 4\n    queue: {maxLength: 0}\n"),
        "pools.web.queue.maxLength",
        "1 to 1000000",
    );
    rejects(
        &pool("    maxInFlightPerEndpoint: 4\n    queue: {maxLength: 5, timeout: 0s}\n"),
        "pools.web.queue.timeout",
        "longer than zero",
    );
    rejects(
        &pool("    drainTimeout: later\n"),
        "pools.web.drainTimeout",
        "not a duration",
    );
}

#[test]
fn rejects_bad_backup_pools() {
    rejects(
        &pool("    backupPool: nowhere\n"),
        "pools.web.backupPool",
        "no pool named `nowhere`",
    );
    rejects(
        &pool("    backupPool: web\n"),
        "pools.web.backupPool",
        "its own backup",
    );
    let chained = Doc {
        pools: format!(
            "{POOLS}    backupPool: b\n  b:\n    endpoints: {{static: [\"127.0.0.1:9003\"]}}\n    backupPool: c\n  c:\n    endpoints: {{static: [\"127.0.0.1:9004\"]}}\n"
        ),
        ..Doc::default()
    }
    .text();
    rejects(&chained, "pools.web.backupPool", "do not chain");
}

#[test]
fn rejects_bad_discovery_sources() {
    let only = |source: &str| {
        Doc {
            pools: format!("pools:\n  web:\n    endpoints:\n      {source}\n"),
            ..Doc::default()
        }
        .text()
    };
    rejects(
        &only("file: {path: \"\"}"),
        "pools.web.endpoints.file.path",
        "empty",
    );
    rejects(
        &only("file: {path: e.yaml, interval: 0s}"),
        "pools.web.endpoints.file.interval",
        "longer than zero",
    );
    rejects(
        &only("dns: {name: \"http://x\", port: 80}"),
        "pools.web.endpoints.dns.name",
        "not a DNS name",
    );
    rejects(
        &only("dns: {name: moodle.lms, port: 0}"),
        "pools.web.endpoints.dns.port",
        "1 to 65535",
    );
    rejects(
        &only("dns: {name: moodle.lms, port: 80, nameservers: [dns]}"),
        "pools.web.endpoints.dns.nameservers[0]",
        "not an `ip:port`",
    );
    rejects(
        &only("kubernetes: {service: Moodle, port: 80}"),
        "pools.web.endpoints.kubernetes.service",
        "not a Service name",
    );
    rejects(
        &only("kubernetes: {service: moodle, namespace: LMS, port: 80}"),
        "pools.web.endpoints.kubernetes.namespace",
        "not a namespace",
    );
    rejects(
        &only("kubernetes: {service: moodle, port: 0}"),
        "pools.web.endpoints.kubernetes.port",
        "1 to 65535",
    );
    rejects(
        &only("kubernetes: {service: moodle, port: \"Http Port\"}"),
        "pools.web.endpoints.kubernetes.port",
        "not a port name",
    );
    rejects(
        &only("consul: {service: moodle}"),
        "pools.web.endpoints.consul",
        "unknown field",
    );
}

#[test]
fn accepts_discovery_sources() {
    let c = parse(&Doc {
        pools: "pools:\n  web:\n    endpoints:\n      file: {path: eps.yaml}\n      dns: {name: moodle.lms.svc, port: 8080, nameservers: [\"127.0.0.1:5353\"]}\n      kubernetes: {service: moodle, port: http}\n".into(),
        ..Doc::default()
    }
    .text())
    .unwrap();
    let d = &c.pools["web"].discovery;
    let f = d.file.as_ref().unwrap();
    assert_eq!(
        (f.path.as_path(), f.interval),
        (Path::new("/etc/usher/eps.yaml"), Duration::from_secs(1))
    );
    let dns = d.dns.as_ref().unwrap();
    assert_eq!(
        (dns.port, dns.interval, dns.nameservers.len()),
        (8080, Duration::from_secs(5), 1)
    );
    let k = d.kubernetes.as_ref().unwrap();
    assert_eq!(
        (k.namespace.as_str(), &k.port),
        ("default", &super::KubernetesPort::Name("http".into()))
    );
}

#[test]
fn rejects_bad_route_extras() {
    let route = |extra: &str| {
        Doc {
            routes: format!("routes:\n  - pool: web\n{extra}"),
            ..Doc::default()
        }
        .text()
    };
    rejects(
        &route("    rateLimit: {requestsPerSecond: 0}\n"),
        "routes[0].rateLimit.requestsPerSecond",
        "0 is out of range; use 0.001 to 1000000",
    );
    rejects(
        &route("    rateLimit: {requestsPerSecond: 5, burst: 0.5}\n"),
        "routes[0].rateLimit.burst",
        "0.5 is out of range; use 1 to 1000000",
    );
    rejects(
        &route("    cache: {ttl: 0s}\n"),
        "routes[0].cache.ttl",
        "longer than zero",
    );
    rejects(
        &route("    cache: {ttl: 1s, maxEntries: 0}\n"),
        "routes[0].cache.maxEntries",
        "0 is out of range; use 1 to 10000000",
    );
    rejects(
        &route("    cache: {ttl: 1s, sessionCookies: [\"a;b\"]}\n"),
        "routes[0].cache.sessionCookies[0]",
        "not a cookie name",
    );
    rejects(
        &route("    cache: {ttl: 1s, maxBodyBytes: lots}\n"),
        "routes[0].cache.maxBodyBytes",
        "not a size",
    );
    let c = parse(&route("    rateLimit: {requestsPerSecond: 2.5}\n")).unwrap();
    assert_eq!(c.routes[0].rate_limit.as_ref().unwrap().burst, 2.5);
}

#[test]
fn trusted_proxies() {
    let doc = |list: &str| format!("trustedProxies: {list}\n{}", Doc::default().text());
    let c = parse(&doc("[\"10.0.0.0/8\", \"192.0.2.10\", \"::1\"]")).unwrap();
    assert_eq!(c.trusted_proxies.len(), 3);
    assert!(c.trusted_proxies[1].contains(&"192.0.2.10".parse::<std::net::IpAddr>().unwrap()));
    rejects(
        &doc("[\"10.0.0.0/33\"]"),
        "trustedProxies[0]",
        "not an address or CIDR",
    );
}

/// Values that `check` used to accept and that crashed the running process
/// (an overflowing deadline, moka's TTL assertion, a refill wait past
/// `Duration::MAX`), and every other bounded number at both ends: each is
/// refused at its field, with the allowed range in the message.
#[test]
fn rejects_values_outside_their_bounds() {
    let route = |extra: &str| {
        Doc {
            routes: format!("routes:\n  - pool: web\n{extra}"),
            ..Doc::default()
        }
        .text()
    };
    let shutdown = |extra: &str| {
        Doc {
            shutdown: format!("shutdown:\n{extra}"),
            ..Doc::default()
        }
        .text()
    };
    // The crashes found by the robustness review.
    rejects(
        &route("    cache: {ttl: 2000y}\n"),
        "routes[0].cache.ttl",
        "is out of range; use 1ms to 1d",
    );
    rejects(
        &listener("    limits: {headerReadTimeout: 300000000000y}\n"),
        "listeners[0].limits.headerReadTimeout",
        "use 100ms to 10m",
    );
    rejects(
        &route("    rateLimit: {requestsPerSecond: 1.0e-30}\n"),
        "routes[0].rateLimit.requestsPerSecond",
        "out of range; use 0.001 to 1000000",
    );
    rejects(
        &pool("    outlierDetection: {baseEjectionTime: 300000000000y}\n"),
        "pools.web.outlierDetection.baseEjectionTime",
        "use 100ms to 1d",
    );
    rejects(
        &pool("    outlierDetection: {maxEjectionTime: 300000000000y}\n"),
        "pools.web.outlierDetection.maxEjectionTime",
        "use 100ms to 1d",
    );
    // Every other bound, above and below.
    let cases: &[(String, &str, &str)] = &[
        (shutdown("  drainTimeout: 2h\n"), "shutdown.drainTimeout", "use 100ms to 1h"),
        (shutdown("  drainTimeout: 10ms\n"), "shutdown.drainTimeout", "use 100ms to 1h"),
        (shutdown("  delay: 1h\n"), "shutdown.delay", "use 0s to 10m"),
        (listener("    limits: {headerReadTimeout: 1ms}\n"), "listeners[0].limits.headerReadTimeout", "use 100ms to 10m"),
        (listener("    limits: {maxBodyBytes: 65GiB}\n"), "listeners[0].limits.maxBodyBytes", "use 1 to 64GiB"),
        (listener("    limits: {maxHeaderBytes: 2MiB}\n"), "listeners[0].limits.maxHeaderBytes", "use 8KiB to 1MiB"),
        (pool("    maxInFlightPerEndpoint: 4\n    queue: {maxLength: 5, timeout: 1h}\n"), "pools.web.queue.timeout", "use 1ms to 10m"),
        (pool("    drainTimeout: 2days\n"), "pools.web.drainTimeout", "use 0s to 1d"),
        (pool("    endpoints:\n      file: {path: e.yaml, interval: 1ms}\n").replace("    endpoints:\n      static:\n        - \"127.0.0.1:9001\"\n        - \"127.0.0.1:9002\"\n", ""), "pools.web.endpoints.file.interval", "use 100ms to 1d"),
        (pool("    stickySessions: {ttl: 500days}\n"), "pools.web.stickySessions.ttl", "use 1s to 400d"),
        (pool("    slowStart: {window: 2h}\n"), "pools.web.slowStart.window", "use 100ms to 1h"),
        (pool("    slowStart: {window: 5s, aggression: 1000}\n"), "pools.web.slowStart.aggression", "use 0.01 to 100"),
        (route("    cache: {ttl: 1s, maxBodyBytes: 1GiB}\n"), "routes[0].cache.maxBodyBytes", "use 1 to 64MiB"),
        (route("    cache: {ttl: 1s, maxEntries: 100000000}\n"), "routes[0].cache.maxEntries", "use 1 to 10000000"),
        (route("    rateLimit: {requestsPerSecond: 1.0e9}\n"), "routes[0].rateLimit.requestsPerSecond", "use 0.001 to 1000000"),
        (route("    rateLimit: {requestsPerSecond: 5, burst: 1.0e300}\n"), "routes[0].rateLimit.burst", "use 1 to 1000000"),
        (route("    rateLimit: {requestsPerSecond: .nan}\n"), "routes[0].rateLimit.requestsPerSecond", "out of range"),
        (pool("    healthCheck: {interval: 2h}\n"), "pools.web.healthCheck.interval", "use 100ms to 1h"),
        (pool("    healthCheck: {rise: 1000}\n"), "pools.web.healthCheck.rise", "use 1 to 100"),
        (pool("    healthCheck: {fall: 1000}\n"), "pools.web.healthCheck.fall", "use 1 to 100"),
        (pool("    outlierDetection: {consecutive5xx: 100000}\n"), "pools.web.outlierDetection.consecutive5xx", "use 1 to 10000"),
        (pool("    outlierDetection: {baseEjectionTime: 1ms}\n"), "pools.web.outlierDetection.baseEjectionTime", "use 100ms to 1d"),
        (pool("    timeouts: {connect: 1h}\n"), "pools.web.timeouts.connect", "use 1ms to 10m"),
        (pool("    timeouts: {response: 2days}\n"), "pools.web.timeouts.response", "use 1ms to 1d"),
        (pool("    timeouts: {idle: 2h}\n"), "pools.web.timeouts.idle", "use 1ms to 1h"),
        (pool("    maxInFlightPerEndpoint: 10000000\n"), "pools.web.maxInFlightPerEndpoint", "use 1 to 1000000"),
        (pool("    retries: {minConcurrency: 1000000}\n"), "pools.web.retries.minConcurrency", "use 0 to 100000"),
    ];
    for (text, field, part) in cases {
        rejects(text, field, part);
    }
    // The edges themselves are accepted.
    let c = parse(&route(
        "    cache: {ttl: 1day}\n    rateLimit: {requestsPerSecond: 0.001}\n",
    ))
    .unwrap();
    assert_eq!(
        c.routes[0].cache.as_ref().unwrap().ttl,
        Duration::from_secs(86_400)
    );
    let c = parse(&pool("    stickySessions: {ttl: 400days}\n    outlierDetection: {baseEjectionTime: 1day, maxEjectionTime: 1day}\n")).unwrap();
    assert_eq!(
        c.pools["web"].sticky.as_ref().unwrap().ttl,
        Duration::from_secs(400 * 86_400)
    );
}
