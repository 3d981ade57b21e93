//! The autoscaler reads a real balancer's `/metrics` over a real socket.

#[path = "support/web.rs"]
mod web;

use std::time::{Duration, Instant};

use usher_autoscaler::scrape::pool_demand;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_from_a_running_balancer() {
    let backend = web::backend(Duration::ZERO).await;
    let lb = web::balancer("moodle", backend, "").await;
    for _ in 0..5 {
        let page = web::get(
            &format!("http://{}/course/view.php", lb.public),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(page, Some((200, "page".to_string())));
    }
    let (status, text) = web::get(
        &format!("http://{}/metrics", lb.admin),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let demand = pool_demand(&text, "moodle").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(demand.responses_total, 5.0, "{text}");
    assert_eq!(demand.in_flight, 0.0);
    assert_eq!(demand.queued, 0.0);
    assert!(pool_demand(&text, "canvas").is_err());
    lb.balancer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_and_queued_from_a_running_balancer() {
    // 12 held requests at 8 per endpoint: 8 in flight, 4 in the queue.
    let backend = web::backend(Duration::from_secs(60)).await;
    let lb = web::balancer(
        "moodle",
        backend,
        "    maxInFlightPerEndpoint: 8\n    queue: {maxLength: 10, timeout: 60s}\n    timeouts: {response: 120s}\n",
    )
    .await;
    web::hold_requests(lb.public, 12);
    let start = Instant::now();
    loop {
        let (_, text) = web::get(
            &format!("http://{}/metrics", lb.admin),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let demand = pool_demand(&text, "moodle").unwrap_or_else(|e| panic!("{e}\n{text}"));
        if (demand.in_flight, demand.queued) == (8.0, 4.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never saw 8 in flight and 4 queued; last: {demand:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
