//! The autoscaler's own Prometheus metrics (`usher_autoscaler_*`) and the
//! small HTTP server that exposes them with `/healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::runner::{Replicas, Step};

/// Labels of per-policy metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name` of the policy.
    pub policy: String,
}

/// Labels of scale events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// `up` or `down`.
    pub direction: &'static str,
}

/// Labels of errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's `metric_label()`.
    pub error: &'static str,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// Every metric the autoscaler exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    desired: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    current: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    ready: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    panic: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    stale: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    limited: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    in_flight: Family<PolicyLabels, GaugeF>,
    queued: Family<PolicyLabels, GaugeF>,
    rps: Family<PolicyLabels, GaugeF>,
    forecast: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    needed: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    min_replicas: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    max_replicas: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    decision_seconds: Family<PolicyLabels, Histogram>,
    scrape_errors: Family<PolicyLabels, Counter>,
    scale_events: Family<ScaleLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    leader: Gauge<i64, AtomicI64>,
    dry_run: Gauge<i64, AtomicI64>,
}

fn decision_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Self {
        Self {
            desired: Family::default(),
            current: Family::default(),
            ready: Family::default(),
            panic: Family::default(),
            stale: Family::default(),
            limited: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
            rps: Family::default(),
            forecast: Family::default(),
            needed: Family::default(),
            min_replicas: Family::default(),
            max_replicas: Family::default(),
            decision_seconds: Family::new_with_constructor(decision_histogram),
            scrape_errors: Family::default(),
            scale_events: Family::default(),
            errors: Family::default(),
            leader: Gauge::default(),
            dry_run: Gauge::default(),
        }
    }

    /// A registry with every family, prefixed `usher_autoscaler`.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("usher_autoscaler");
        r.register(
            "desired_replicas",
            "Replicas the policy wants",
            self.desired.clone(),
        );
        r.register(
            "current_replicas",
            "Replicas the target asks for",
            self.current.clone(),
        );
        r.register(
            "ready_replicas",
            "Ready pods of the target",
            self.ready.clone(),
        );
        r.register(
            "panic_mode",
            "1 while the policy is in panic (surge) mode",
            self.panic.clone(),
        );
        r.register(
            "metrics_stale",
            "1 while the balancers' metrics are missing or stale and the replicas are held",
            self.stale.clone(),
        );
        r.register(
            "scaling_limited",
            "1 when stabilization, a rate policy or min/max held the last decision back",
            self.limited.clone(),
        );
        r.register(
            "observed_in_flight",
            "Requests in flight to the pool, summed over balancers",
            self.in_flight.clone(),
        );
        r.register(
            "observed_queued",
            "Requests in the pool's surge queues, summed over balancers",
            self.queued.clone(),
        );
        r.register(
            "observed_requests_per_second",
            "The pool's response rate, summed over balancers",
            self.rps.clone(),
        );
        r.register(
            "needed_replicas",
            "Pods the demand needs now, before tolerance, floors, behavior and min/max; above max_replicas the policy is under-provisioned",
            self.needed.clone(),
        );
        r.register(
            "min_replicas",
            "The policy's minReplicas",
            self.min_replicas.clone(),
        );
        r.register(
            "max_replicas",
            "The policy's maxReplicas",
            self.max_replicas.clone(),
        );
        r.register(
            "forecast_replicas",
            "Replicas the predictive forecast asks for as a floor (recorded in forecastOnly mode too)",
            self.forecast.clone(),
        );
        r.register(
            "decision_duration_seconds",
            "Time from the start of a tick (reading the metrics) to its decision",
            self.decision_seconds.clone(),
        );
        r.register(
            "scrape_errors",
            "Failed reads of a balancer replica or Prometheus",
            self.scrape_errors.clone(),
        );
        r.register(
            "scale_events",
            "Changes of the target's replicas by direction",
            self.scale_events.clone(),
        );
        r.register("errors", "Reconcile errors by kind", self.errors.clone());
        r.register(
            "leader",
            "1 while this instance holds the leader lease and acts",
            self.leader.clone(),
        );
        r.register(
            "dry_run",
            "1 when decisions are recorded but never applied",
            self.dry_run.clone(),
        );
        r
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }

    fn labels(policy: &str) -> PolicyLabels {
        PolicyLabels {
            policy: policy.to_string(),
        }
    }

    /// Records one tick of `policy`, whose bounds are `min`..=`max`.
    pub fn tick(
        &self,
        policy: &str,
        bounds: (u32, u32),
        replicas: Replicas,
        step: &Step,
        seconds: f64,
    ) {
        let l = Self::labels(policy);
        self.min_replicas.get_or_create(&l).set(i64::from(bounds.0));
        self.max_replicas.get_or_create(&l).set(i64::from(bounds.1));
        if let Some(n) = step.decision.needed {
            self.needed.get_or_create(&l).set(i64::from(n));
        }
        self.desired
            .get_or_create(&l)
            .set(i64::from(step.decision.desired));
        self.current
            .get_or_create(&l)
            .set(i64::from(replicas.current));
        self.ready.get_or_create(&l).set(i64::from(replicas.ready));
        self.panic
            .get_or_create(&l)
            .set(i64::from(step.decision.mode == crate::decide::Mode::Panic));
        self.stale.get_or_create(&l).set(i64::from(step.stale));
        self.limited
            .get_or_create(&l)
            .set(i64::from(step.decision.limited));
        if let Some(v) = step.observation.in_flight {
            self.in_flight.get_or_create(&l).set(v);
        }
        if let Some(v) = step.observation.queued {
            self.queued.get_or_create(&l).set(v);
        }
        if let Some(v) = step.observation.requests_per_second {
            self.rps.get_or_create(&l).set(v);
        }
        match step.decision.forecast {
            Some(f) => {
                self.forecast.get_or_create(&l).set(i64::from(f));
            }
            None => {
                self.forecast.remove(&l);
            }
        }
        self.decision_seconds.get_or_create(&l).observe(seconds);
    }

    /// Counts `n` failed scrapes of `policy`'s source.
    pub fn scrape_errors(&self, policy: &str, n: usize) {
        self.scrape_errors
            .get_or_create(&Self::labels(policy))
            .inc_by(n as u64);
    }

    /// Counts a scale of `policy` from `from` to `to` replicas.
    pub fn scaled(&self, policy: &str, from: u32, to: u32) {
        let direction = if to > from { "up" } else { "down" };
        self.scale_events
            .get_or_create(&ScaleLabels {
                policy: policy.to_string(),
                direction,
            })
            .inc();
    }

    /// Counts an error by its label.
    pub fn error(&self, label: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Sets the dry-run gauge.
    pub fn set_dry_run(&self, dry_run: bool) {
        self.dry_run.set(i64::from(dry_run));
    }

    /// Forgets a policy that no longer exists.
    pub fn remove(&self, policy: &str) {
        let l = Self::labels(policy);
        for f in [
            &self.desired,
            &self.current,
            &self.ready,
            &self.panic,
            &self.stale,
            &self.limited,
            &self.forecast,
            &self.needed,
            &self.min_replicas,
            &self.max_replicas,
        ] {
            f.remove(&l);
        }
        for f in [&self.in_flight, &self.queued, &self.rps] {
            f.remove(&l);
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the task
/// is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, kind: &'static str| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match req.uri().path() {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    out,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{e}\n"),
                    "text/plain",
                ),
            }
        }
        "/healthz" | "/readyz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Binds `addr` and serves the metrics in the background; returns the bound
/// address.
pub async fn start(addr: SocketAddr, metrics: &Metrics) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, Arc::new(metrics.registry())));
    Ok(bound)
}
