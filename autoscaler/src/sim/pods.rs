//! The pod model: a fluid queue in front of identical pods.
//!
//! - Each ready pod serves `pod_rps` requests per second
//!   (= workers / service time); a request takes `service_time` in service.
//! - A new pod serves nothing for `cold_start`, then its full capacity
//!   (no warm-up ramp). Scaling down removes pods at once, not-ready and
//!   newest first (as a ReplicaSet does).
//! - Each second: `served = min(backlog + arrivals, ready × pod_rps)`; the
//!   rest waits (FIFO) for later seconds. Requests that would wait longer
//!   than `queue_timeout` fail (the balancer's queue timeout, 503), as do
//!   all requests while no pod is ready.
//! - Latency is `service_time` plus the wait: the 95th-percentile request
//!   of the second finds `backlog + 0.95 × (arrivals − capacity)` requests
//!   ahead of it and waits that divided by the capacity (Little's law).
//!   Below capacity nobody waits: the model ignores sub-second burstiness,
//!   so it is optimistic near 100% utilisation.
//! - The balancer sees `in flight = served × service_time` (busy workers)
//!   and `queued = backlog`; its request rate is the responses per second
//!   (served plus failed), as `pool_responses_total` counts them.

use std::time::Duration;

/// Capacity and timing of one pod.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodModel {
    /// Requests per second one ready pod serves.
    pub pod_rps: f64,
    /// Time a request spends in service.
    pub service_time: Duration,
    /// Time from creation until a pod is ready.
    pub cold_start: Duration,
    /// Longest wait in the queue before a request fails.
    pub queue_timeout: Duration,
}

impl Default for PodModel {
    /// 10 workers at 200 ms (50 req/s per pod), 30 s cold start, the
    /// balancer's 10 s queue timeout.
    fn default() -> Self {
        Self::from_concurrency(10.0, Duration::from_millis(200))
    }
}

impl PodModel {
    /// A pod of `workers` concurrent workers, each request taking `service_time`.
    pub fn from_concurrency(workers: f64, service_time: Duration) -> Self {
        Self {
            pod_rps: workers / service_time.as_secs_f64().max(1e-6),
            service_time,
            cold_start: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(10),
        }
    }

    /// Concurrent requests one pod serves (`pod_rps × service_time`).
    pub fn workers(&self) -> f64 {
        self.pod_rps * self.service_time.as_secs_f64()
    }

    /// Whole seconds of cold start (rounded up).
    pub fn cold_start_secs(&self) -> u64 {
        self.cold_start.as_secs_f64().ceil() as u64
    }
}

/// What happened in one second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Second {
    /// Requests that arrived.
    pub arrivals: f64,
    /// Requests answered successfully.
    pub served: f64,
    /// Requests that failed (queue timeout, no ready pod).
    pub failed: f64,
    /// Busy workers on average (`served × service_time`).
    pub in_service: f64,
    /// Requests waiting at the end of the second.
    pub queued: f64,
    /// 95th percentile latency of the second's requests (`None`: none).
    pub p95: Option<Duration>,
    /// Ready pods.
    pub ready: u32,
    /// Pods asked for, ready or not.
    pub replicas: u32,
}

/// The pods of one simulated Deployment and their queue.
#[derive(Debug, Clone)]
pub struct Pods {
    model: PodModel,
    /// Second from which each pod serves, oldest pod first.
    ready_at: Vec<u64>,
    backlog: f64,
}

impl Pods {
    /// `n` pods, all ready.
    pub fn new(model: PodModel, n: u32) -> Self {
        Self {
            model,
            ready_at: vec![0; n as usize],
            backlog: 0.0,
        }
    }

    /// Pods asked for.
    pub fn replicas(&self) -> u32 {
        self.ready_at.len() as u32
    }

    /// Pods serving in second `t`.
    pub fn ready(&self, t: u64) -> u32 {
        self.ready_at.iter().filter(|&&r| r <= t).count() as u32
    }

    /// Scales to `n` pods at the start of second `t`: new pods serve from
    /// `t + cold start`; removed pods go at once, not-ready and newest first.
    pub fn scale_to(&mut self, n: u32, t: u64) {
        let n = n as usize;
        if n > self.ready_at.len() {
            let at = t + self.model.cold_start_secs();
            self.ready_at.resize(n, at);
        } else {
            // `ready_at` is in creation order, so the newest pods (which
            // are also the least ready) are at the end.
            self.ready_at.truncate(n);
        }
    }

    /// Plays second `t` with `arrivals` requests.
    pub fn serve(&mut self, t: u64, arrivals: f64) -> Second {
        let ready = self.ready(t);
        let capacity = f64::from(ready) * self.model.pod_rps;
        let service = self.model.service_time.as_secs_f64();
        let mut out = Second {
            arrivals,
            ready,
            replicas: self.replicas(),
            ..Second::default()
        };
        let before = self.backlog;
        let work = before + arrivals;
        if capacity <= 0.0 {
            // No pod: the balancer answers 503 at once.
            out.failed = work;
            self.backlog = 0.0;
            return out;
        }
        out.served = work.min(capacity);
        let rest = work - out.served;
        let timeout = self.model.queue_timeout.as_secs_f64();
        out.failed = (rest - capacity * timeout).max(0.0);
        self.backlog = rest - out.failed;
        out.queued = self.backlog;
        out.in_service = out.served * service;
        if work > 0.0 {
            let ahead = (before + 0.95 * (arrivals - capacity)).max(0.0);
            let wait = (ahead / capacity).min(timeout);
            out.p95 = Some(Duration::from_micros(
                ((service + wait) * 1e6).round() as u64
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PodModel {
        PodModel {
            pod_rps: 10.0,
            service_time: Duration::from_millis(100),
            cold_start: Duration::from_secs(3),
            queue_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn below_capacity_nobody_waits() {
        let mut pods = Pods::new(model(), 2);
        let s = pods.serve(0, 15.0);
        assert_eq!((s.served, s.failed, s.queued), (15.0, 0.0, 0.0));
        assert_eq!(s.p95, Some(Duration::from_millis(100)));
        assert!((s.in_service - 1.5).abs() < 1e-9);
        assert_eq!(pods.serve(1, 0.0).p95, None);
    }

    #[test]
    fn overload_queues_then_fails_past_the_timeout() {
        let mut pods = Pods::new(model(), 1);
        let s = pods.serve(0, 20.0);
        assert_eq!((s.served, s.queued, s.failed), (10.0, 10.0, 0.0));
        // The 95th-percentile arrival finds 0.95 × (20 − 10) ahead: 0.95 s wait.
        assert_eq!(s.p95, Some(Duration::from_millis(1050)));
        let s = pods.serve(1, 20.0);
        assert_eq!((s.served, s.queued, s.failed), (10.0, 20.0, 0.0));
        let s = pods.serve(2, 20.0);
        // 30 waiting, at most 2 s × 10/s may: 10 fail.
        assert_eq!((s.served, s.queued, s.failed), (10.0, 20.0, 10.0));
        assert_eq!(
            s.p95,
            Some(Duration::from_millis(2100)),
            "wait capped at the timeout"
        );
        // The queue drains once the load drops.
        let s = pods.serve(3, 0.0);
        assert_eq!((s.served, s.queued), (10.0, 10.0));
    }

    #[test]
    fn new_pods_are_cold_and_scale_down_removes_the_newest_first() {
        let mut pods = Pods::new(model(), 1);
        pods.scale_to(3, 10);
        assert_eq!((pods.replicas(), pods.ready(12)), (3, 1));
        assert_eq!(pods.ready(13), 3);
        assert_eq!(pods.serve(12, 30.0).served, 10.0);
        pods.scale_to(2, 12);
        assert_eq!((pods.replicas(), pods.ready(12)), (2, 1));
        pods.scale_to(1, 20);
        assert_eq!(
            (pods.replicas(), pods.ready(20)),
            (1, 1),
            "the old ready pod stays"
        );
    }

    #[test]
    fn no_ready_pod_fails_everything() {
        let mut pods = Pods::new(model(), 0);
        pods.scale_to(1, 0);
        let s = pods.serve(1, 5.0);
        assert_eq!((s.served, s.failed, s.p95), (0.0, 5.0, None));
    }
}
