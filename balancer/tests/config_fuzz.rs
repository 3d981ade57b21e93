//! Generated and mutated configs thrown at validation and at a live reload.
//!
//! Validation bounds every number, so whatever `check` accepts must run; no
//! input may panic `check`, a reload, the file watcher or a listener, and a
//! reload that fails for any reason leaves the last good config serving.

mod common;

use std::time::Duration;

use common::{Backend, TestBalancer, client, eventually, get};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use usher_balancer::{Options, config};

/// A config that uses every section, with `backend` as the pool's endpoint.
fn base(backend: &str) -> Value {
    json!({
        "listeners": [{
            "name": "public",
            "bind": "127.0.0.1:0",
            "accessLog": false,
            "limits": {"headerReadTimeout": "10s", "maxHeaderBytes": "64KiB", "maxBodyBytes": "1MiB"}
        }],
        "admin": {"bind": "127.0.0.1:0"},
        "shutdown": {"drainTimeout": "5s", "delay": "0s"},
        "trustedProxies": ["10.0.0.0/8"],
        "routes": [
            {"pathPrefix": "/cached/", "pool": "web",
             "cache": {"ttl": "1s", "maxEntries": 100, "maxBodyBytes": "64KiB", "sessionCookies": ["MoodleSession"]}},
            {"pathPrefix": "/", "pool": "web",
             "rateLimit": {"requestsPerSecond": 1000, "burst": 1000}}
        ],
        "pools": {
            "web": {
                "balance": "leastConnections",
                "endpoints": {"static": [{"address": backend, "weight": 100}]},
                "healthCheck": {"path": "/", "interval": "1s", "timeout": "500ms", "rise": 1, "fall": 3, "expectStatus": "200-399"},
                "outlierDetection": {"enabled": true, "consecutive5xx": 5, "baseEjectionTime": "30s", "maxEjectionTime": "300s", "maxEjectionPercent": 50},
                "retries": {"attempts": 2, "budgetPercent": 20, "minConcurrency": 3},
                "timeouts": {"connect": "1s", "response": "10s", "idle": "4s"},
                "stickySessions": {"cookie": "usher_affinity", "ttl": "8h"},
                "slowStart": {"window": "1s", "aggression": 1.0, "minWeightPercent": 10},
                "maxInFlightPerEndpoint": 100,
                "queue": {"maxLength": 100, "timeout": "5s"},
                "drainTimeout": "5s"
            }
        }
    })
}

/// Paths (object keys and array indices) of every value in `v`.
fn paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(PathStep::Key(k.clone()));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                out.push(at.clone());
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// What one mutation does at its path.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove,
}

fn apply(doc: &mut Value, path: &[PathStep], m: &Mutation) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = doc;
    for step in parent_path {
        parent = match (step, parent) {
            (PathStep::Key(k), Value::Object(o)) => match o.get_mut(k) {
                Some(v) => v,
                None => return,
            },
            (PathStep::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match (last, parent, m) {
        (PathStep::Key(k), Value::Object(o), Mutation::Remove) => {
            o.remove(k);
        }
        (PathStep::Key(k), Value::Object(o), Mutation::Replace(v)) => {
            o.insert(k.clone(), v.clone());
        }
        (PathStep::Index(i), Value::Array(a), Mutation::Remove) if *i < a.len() => {
            a.remove(*i);
        }
        (PathStep::Index(i), Value::Array(a), Mutation::Replace(v)) if *i < a.len() => {
            a[*i] = v.clone();
        }
        _ => {}
    }
}

/// Values a config author (or a typo) could put anywhere: extreme numbers,
/// durations and sizes of every magnitude and unit, odd strings.
fn any_value() -> impl Strategy<Value = Value> {
    let units = prop_oneof![
        Just("ns"),
        Just("us"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("w"),
        Just("y"),
        Just("M"),
        Just("")
    ];
    let sizes = prop_oneof![
        Just(""),
        Just("B"),
        Just("KiB"),
        Just("MiB"),
        Just("GiB"),
        Just("KB"),
        Just("GB")
    ];
    prop_oneof![
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        prop_oneof![Just(0u64), Just(1), Just(u32::MAX as u64), Just(u64::MAX)]
            .prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just(1.0e-30),
            Just(1.0e300),
            Just(-1.0),
            Just(0.0),
            Just(5e-324)
        ]
        .prop_map(|f| json!(f)),
        (any::<u64>(), units.clone()).prop_map(|(n, u)| json!(format!("{n}{u}"))),
        (0u64..100_000, units).prop_map(|(n, u)| json!(format!("{n}{u}"))),
        (any::<u64>(), sizes).prop_map(|(n, u)| json!(format!("{n}{u}"))),
        "[ -~]{0,24}".prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// 1 to 4 mutations, each at a path picked by index among the base's paths.
fn mutations() -> impl Strategy<Value = Vec<(prop::sample::Index, Mutation)>> {
    let one = (
        any::<prop::sample::Index>(),
        prop_oneof![
            8 => any_value().prop_map(Mutation::Replace),
            1 => Just(Mutation::Remove),
        ],
    );
    prop::collection::vec(one, 1..=4)
}

fn mutate(base: &Value, ms: &[(prop::sample::Index, Mutation)]) -> String {
    let mut doc = base.clone();
    for (index, m) in ms {
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let path = &all[index.index(all.len())];
        apply(&mut doc, path, m);
    }
    // YAML 1.2 reads JSON as it is.
    serde_json::to_string_pretty(&doc).unwrap()
}

/// `check`'s validation never panics, on mutations of the full config and
/// of the shipped example file; what it accepts also builds a snapshot.
#[test]
fn validation_never_panics_on_mutated_configs() {
    let file = std::path::Path::new("/tmp/usher-fuzz/balancer.yaml");
    let example_text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/balancer.yaml"),
    )
    .unwrap();
    let example: Value = serde_saphyr::from_str(&example_text).unwrap();
    let full = base("127.0.0.1:8080");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(any::<bool>(), mutations()), |(use_example, ms)| {
            let text = mutate(if use_example { &example } else { &full }, &ms);
            // A panic here fails the property with the generated text.
            let _ = config::from_str(&text, file);
            Ok(())
        })
        .unwrap();
}

/// A live balancer takes a stream of mutated configs through `reload`: it
/// never panics, a rejected reload leaves the previous config serving, and an
/// accepted one is replaced by the good config again, which serves too.
#[test]
fn live_reloads_of_mutated_configs_never_stop_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = rt.block_on(Backend::named("good"));
    let good = serde_json::to_string_pretty(&base(&backend.address())).unwrap();
    let tb = rt.block_on(TestBalancer::start(&good));
    let http = client();
    let base_doc = base(&backend.address());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let accepted = std::cell::Cell::new(0u32);
    let rejected = std::cell::Cell::new(0u32);
    // Reloads run inside the runtime, as from the watcher or SIGHUP: they
    // start health-check tasks.
    let _inside = rt.enter();
    runner
        .run(&mutations(), |ms| {
            let text = mutate(&base_doc, &ms);
            tb.rewrite(&text);
            let result = tb.balancer.reload();
            if result.is_ok() {
                accepted.set(accepted.get() + 1);
                tb.rewrite(&good);
                tb.balancer
                    .reload()
                    .map_err(|e| TestCaseError::fail(format!("the good config failed: {e}")))?;
            } else {
                rejected.set(rejected.get() + 1);
            }
            let answer = rt.block_on(get(&http, &tb.url("/")));
            match answer {
                Ok((status, body)) if status == 200 && body == "good" => Ok(()),
                other => Err(TestCaseError::fail(format!(
                    "after reloading\n{text}\n({result:?}) GET / gave {other:?}"
                ))),
            }
        })
        .unwrap();
    let (accepted, rejected) = (accepted.get(), rejected.get());
    assert!(
        accepted > 0 && rejected > 0,
        "the mutations should give both outcomes: {accepted} accepted, {rejected} rejected"
    );
}

/// The findings of the robustness review: each of these was accepted and
/// then crashed the process (the watcher thread for the cache TTL, every
/// connection for the header timeout, the first refusal for the rate, the
/// first ejection for the ejection times). Through the file watcher, each is
/// rejected; the watcher keeps working, `last_reload_successful` says 0 and
/// the previous config keeps serving.
#[test]
fn the_watcher_survives_values_that_used_to_crash() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = Backend::named("good").await;
        let good = base(&backend.address());
        let text = |doc: &Value| serde_json::to_string_pretty(doc).unwrap();
        let tb = TestBalancer::start_with(
            &text(&good),
            Options {
                watch_interval: Some(Duration::from_millis(50)),
                ..Default::default()
            },
        )
        .await;
        let http = client();
        let successful = |tb: &TestBalancer| {
            tb.balancer
                .shared()
                .metrics
                .config_last_reload_successful
                .get()
        };
        let crashers: [(&str, &[&str], Value); 5] = [
            (
                "cache ttl",
                &["routes", "0", "cache", "ttl"],
                json!("2000y"),
            ),
            (
                "header timeout",
                &["listeners", "0", "limits", "headerReadTimeout"],
                json!("300000000000y"),
            ),
            (
                "rate",
                &["routes", "1", "rateLimit", "requestsPerSecond"],
                json!(1.0e-30),
            ),
            (
                "base ejection",
                &["pools", "web", "outlierDetection", "baseEjectionTime"],
                json!("300000000000y"),
            ),
            (
                "max ejection",
                &["pools", "web", "outlierDetection", "maxEjectionTime"],
                json!("300000000000y"),
            ),
        ];
        for (round, (what, path, value)) in crashers.iter().enumerate() {
            let mut doc = good.clone();
            let steps: Vec<PathStep> = path
                .iter()
                .map(|p| match p.parse() {
                    Ok(i) => PathStep::Index(i),
                    Err(_) => PathStep::Key((*p).to_string()),
                })
                .collect();
            apply(&mut doc, &steps, &Mutation::Replace(value.clone()));
            tb.rewrite(&text(&doc));
            let took = eventually(Duration::from_secs(5), || async { successful(&tb) == 0 }).await;
            assert!(
                took.is_some(),
                "{what}: the reload was not reported as failed"
            );
            let (status, body) = get(&http, &tb.url("/")).await.unwrap();
            assert_eq!((status.as_u16(), body.as_str()), (200, "good"), "{what}");
            // The watcher is alive: a good edit (a new access-log setting each
            // round, so the content differs) is picked up.
            let mut fixed = good.clone();
            fixed["listeners"][0]["accessLog"] = json!(round % 2 == 0);
            fixed["shutdown"]["drainTimeout"] = json!(format!("{}s", 5 + round));
            tb.rewrite(&text(&fixed));
            let took = eventually(Duration::from_secs(5), || async { successful(&tb) == 1 }).await;
            assert!(took.is_some(), "{what}: the watcher stopped reloading");
            assert_eq!(
                tb.balancer
                    .shared()
                    .snapshot
                    .load()
                    .config
                    .shutdown
                    .drain_timeout,
                Duration::from_secs(5 + round as u64),
                "{what}"
            );
        }
    });
}

/// A reload that panics while it is being applied, after the new snapshot
/// may already be published (here: starting a health checker outside the
/// runtime), fails, and the previous config is in force again.
#[test]
fn a_reload_that_panics_while_applying_restores_the_previous_config() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (old, new) =
        rt.block_on(async { (Backend::named("old").await, Backend::named("new").await) });
    let mut good = base(&old.address());
    good["shutdown"]["drainTimeout"] = json!("5s");
    let text = |doc: &Value| serde_json::to_string_pretty(doc).unwrap();
    let tb = rt.block_on(TestBalancer::start(&text(&good)));
    let mut changed = base(&new.address());
    changed["shutdown"]["drainTimeout"] = json!("7s");
    tb.rewrite(&text(&changed));
    // Outside the runtime: the new endpoint's health checker cannot start.
    let result = tb.balancer.reload();
    assert!(result.is_err(), "the reload should have failed: {result:?}");
    let config = tb.balancer.shared().snapshot.load().config.clone();
    assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(5));
    assert_eq!(
        tb.balancer
            .shared()
            .metrics
            .config_last_reload_successful
            .get(),
        0
    );
    let (status, body) = rt.block_on(get(&client(), &tb.url("/"))).unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "old"));
}
