//! Routing over real sockets: least-connections and weights.

mod common;

use std::time::Duration;

use common::{Backend, TestBalancer, client, config, get};
use futures_util::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_fewer_requests_to_a_slow_endpoint() {
    let fast_a = Backend::slow("fast-a", Duration::from_millis(5)).await;
    let fast_b = Backend::slow("fast-b", Duration::from_millis(5)).await;
    let slow = Backend::slow("slow", Duration::from_millis(200)).await;
    let tb = TestBalancer::start(&config(&[&fast_a, &slow, &fast_b], "")).await;
    let url = tb.url("/course/view.php");

    // 8 concurrent learners, 25 requests each.
    let workers = (0..8).map(|_| {
        let url = url.clone();
        async move {
            let c = client();
            for _ in 0..25 {
                let (status, _) = get(&c, &url).await.unwrap();
                assert_eq!(status, 200);
            }
        }
    });
    join_all(workers).await;

    let (a, b, s) = (fast_a.hits(), fast_b.hits(), slow.hits());
    assert_eq!(a + b + s, 200);
    assert!(
        s * 4 < a.min(b),
        "slow endpoint got {s}, fast ones {a} and {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_honoured() {
    let light = Backend::named("light").await;
    let heavy = Backend::named("heavy").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n        - address: \"{}\"\n          weight: 100\n        - address: \"{}\"\n          weight: 300\n",
        light.address(),
        heavy.address()
    );
    let tb = TestBalancer::start(&yaml).await;
    let c = client();
    for _ in 0..800 {
        assert_eq!(get(&c, &tb.url("/")).await.unwrap().0, 200);
    }
    let share = heavy.hits() as f64 / 800.0;
    assert!(
        (0.68..0.82).contains(&share),
        "heavy share {share}, light {}",
        light.hits()
    );
}
