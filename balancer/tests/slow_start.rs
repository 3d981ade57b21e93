//! Slow start over real sockets: an endpoint added by a reload ramps up its
//! share of a steady load over the slow-start window; endpoints present at
//! start take their full share at once.
//!
//! Why 16 clients: the pool balances by weighted least-connections, whose key
//! is `in_flight / weight`, and slow start works by scaling the weight. With
//! 3 or 4 clients over 3 endpoints the in-flight counts are 0, 1 or 2 and the
//! key barely sees a weight between 1/3 and 1 (a reduced-weight endpoint is
//! still picked whenever it is idle and the others are not, so its share sits
//! at 1/4 to 1/3 whatever its weight). With enough requests in flight (here
//! about 5 per endpoint) least-connections spreads them in proportion to the
//! weights, which is what this test measures. (With a single sequential
//! client the weighted tie-break does the same; both regimes were checked in
//! a simulation of the picker: 16 clients give shares of about 0.16 at
//! weight 1/3, 0.21 at 1/2, 0.25 at 2/3 and 0.33 at 1.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, TestBalancer, client, config, get};

/// Clients of the steady load.
const CLIENTS: usize = 16;
/// Backend think time per request.
const DELAY: Duration = Duration::from_millis(10);
/// Slow-start settings of the pool: 3 s window, 10 % floor.
const SLOW_START: &str = "    slowStart:\n      window: 3s\n      minWeightPercent: 10\n";

/// One request of the load: when it was sent and which backend answered.
struct Sample {
    sent: Instant,
    backend: String,
}

/// `CLIENTS` keep-alive clients sending GETs back to back until stopped
/// (bounded: at most 20k requests each); every request must succeed.
fn load(url: String, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    (0..CLIENTS)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut samples = Vec::new();
                for _ in 0..20_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let sent = Instant::now();
                    let (status, backend) = get(&c, &url).await.unwrap();
                    assert_eq!(status, 200, "{backend}");
                    samples.push(Sample { sent, backend });
                }
                samples
            })
        })
        .collect()
}

/// Requests and shares of `a`, `b`, `c` in one bucket.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    total: usize,
    a: usize,
    b: usize,
    c: usize,
}

impl Bucket {
    fn share(&self, n: usize) -> f64 {
        n as f64 / self.total.max(1) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_endpoint_ramps_up_over_the_window_and_initial_ones_do_not() {
    let a = Backend::slow("a", DELAY).await;
    let b = Backend::slow("b", DELAY).await;
    let c = Backend::slow("c", DELAY).await;
    let started = Instant::now();
    let tb = TestBalancer::start(&config(&[&a, &b], SLOW_START)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(tb.url("/theme/image.php"), stop.clone());

    // Add `c` right away: its ramp starts during this reload.
    tb.rewrite(&config(&[&a, &b, &c], SLOW_START));
    let reload_began = Instant::now();
    tb.balancer.reload().unwrap();
    let added = Instant::now();
    // `a` and `b` are the pool's start-up endpoints; were they slow-started
    // too, their ramp would have begun less than 0.5 s before `c`'s, and in
    // `c`'s first second their weights would be at most about 1/2, not 1:
    // `c` would get a quarter or more of the requests there.
    let head_start = reload_began - started;
    assert!(
        head_start < Duration::from_millis(500),
        "setup too slow to tell: {head_start:?} between start and the reload"
    );

    // Four 1 s buckets after the reload: the ramp (3 s) and one full second.
    tokio::time::sleep_until((added + Duration::from_millis(4100)).into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut buckets = [Bucket::default(); 4];
    for w in workers {
        for s in w.await.unwrap() {
            // Sent after `added`: picked with `c` present, its ramp begun
            // (between `reload_began` and `added`) at most 1 s × k earlier.
            let Some(since) = s.sent.checked_duration_since(added) else {
                continue;
            };
            let Some(bucket) = buckets.get_mut(since.as_secs() as usize) else {
                continue;
            };
            bucket.total += 1;
            match s.backend.as_str() {
                "a" => bucket.a += 1,
                "b" => bucket.b += 1,
                "c" => bucket.c += 1,
                other => panic!("unknown backend {other}"),
            }
        }
    }
    let shares: Vec<f64> = buckets.iter().map(|b| b.share(b.c)).collect();
    let report = format!("c's shares per second {shares:.3?}, buckets {buckets:?}");
    eprintln!("{report}");
    for bk in &buckets {
        assert!(bk.total >= 50, "the load barely flowed: {report}");
    }

    // Weight factor of `c`: 1/3 during its first second (elapsed time counts
    // at least 1 s of the 3 s window; the 10 % floor is below that), rising
    // linearly to 1 at 3 s. Expected shares about 0.16, 0.21, 0.27, 0.33 (an
    // exact weighted split would give 1/7, ~0.2, ~0.27, 1/3). Bounds: a
    // noisy box shifts single buckets by a few hundredths, not by 0.06.
    let (first, last) = (shares[0], shares[3]);
    assert!(
        first < 0.22,
        "c got a large share in its first second: {report}"
    );
    assert!(last > 0.27, "c did not reach its full share: {report}");
    assert!(first < last, "{report}");
    // The ramp is gradual: the middle seconds lie between.
    let middle = (shares[1] + shares[2]) / 2.0;
    assert!(
        first < middle && middle < last,
        "the share did not rise through the window: {report}"
    );

    // `a` and `b` took an even, full share from the first second on.
    let first_bucket = buckets[0];
    let (sa, sb) = (
        first_bucket.share(first_bucket.a),
        first_bucket.share(first_bucket.b),
    );
    assert!(
        sa > 0.3 && sb > 0.3 && (sa - sb).abs() < 0.12,
        "a {sa:.3}, b {sb:.3} in c's first second: {report}"
    );
}
