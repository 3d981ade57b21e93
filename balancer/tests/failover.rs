//! Failover over real sockets: a pool with no healthy endpoint sends its
//! traffic to its `backupPool` (a maintenance page), and takes it back as
//! soon as an endpoint is healthy again; both switches are counted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, TestBalancer, client, endpoint_state, eventually, get, metric, switchable};

const WEB: &str = "pool=\"web\"";

/// `usher_balancer_pool_using_backup{pool="web"}`.
async fn using_backup(tb: &TestBalancer) -> f64 {
    metric(tb, "usher_balancer_pool_using_backup", &[WEB])
        .await
        .expect("no using_backup sample for web")
}

/// `usher_balancer_pool_failovers_total{pool="web",to=…}`.
async fn failovers(tb: &TestBalancer, to: &str) -> f64 {
    let to = format!("to=\"{to}\"");
    metric(
        tb,
        "usher_balancer_pool_failovers_total",
        &[WEB, to.as_str()],
    )
    .await
    .unwrap_or_else(|| panic!("no failovers sample for {to}"))
}

/// Pool `web` (checked every 200 ms, fall 1, rise 1) backed by pool `maintenance`.
fn failover_config(web: &[&Backend], maintenance: &Backend) -> String {
    let list: String = web
        .iter()
        .map(|b| format!("        - \"{}\"\n", b.address()))
        .collect();
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n{list}    healthCheck:\n      path: /healthz\n      interval: 200ms\n      timeout: 100ms\n      rise: 1\n      fall: 1\n    backupPool: maintenance\n  maintenance:\n    endpoints:\n      static:\n        - \"{}\"\n",
        maintenance.address()
    )
}

/// Waits until `backend` has `state` in pool `web`.
async fn wait_state(tb: &TestBalancer, backend: &Backend, state: &str) {
    let address = backend.address();
    eventually(Duration::from_secs(10), || async {
        endpoint_state(tb, "web", &address).await == state
    })
    .await
    .unwrap_or_else(|| panic!("{address} never became {state}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_fails_over_to_the_backup_pool_and_back() {
    let (sick_a, sick_b) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let web_a = switchable("web-a", sick_a.clone()).await;
    let web_b = switchable("web-b", sick_b.clone()).await;
    let maintenance = Backend::named("maintenance").await;
    let tb = TestBalancer::start(&failover_config(&[&web_a, &web_b], &maintenance)).await;
    let c = client();
    let url = tb.url("/course/view.php?id=2");

    // Healthy: nothing reaches the backup.
    for _ in 0..20 {
        let (status, body) = get(&c, &url).await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.starts_with("web-"),
            "healthy pool answered by {body:?}"
        );
    }
    assert_eq!(maintenance.hits(), 0);
    assert_eq!(using_backup(&tb).await, 0.0);
    assert_eq!(failovers(&tb, "backup").await, 0.0);

    // One endpoint down is not a failover: the other one serves.
    sick_a.store(true, Ordering::SeqCst);
    wait_state(&tb, &web_a, "unhealthy").await;
    for _ in 0..20 {
        let (status, body) = get(&c, &url).await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "web-b"));
    }
    assert_eq!(
        maintenance.hits(),
        0,
        "failed over with a healthy endpoint left"
    );
    assert_eq!(using_backup(&tb).await, 0.0);

    // Both down: the maintenance pool answers.
    sick_b.store(true, Ordering::SeqCst);
    eventually(Duration::from_secs(10), || async {
        get(&c, &url).await.unwrap().1 == "maintenance"
    })
    .await
    .expect("traffic never moved to the backup pool");
    let web_hits = web_a.hits() + web_b.hits();
    for _ in 0..20 {
        let (status, body) = get(&c, &url).await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "maintenance"));
    }
    assert_eq!(
        web_a.hits() + web_b.hits(),
        web_hits,
        "the failed pool received requests"
    );
    assert_eq!(using_backup(&tb).await, 1.0);
    assert_eq!(
        failovers(&tb, "backup").await,
        1.0,
        "one switch, however many requests"
    );
    assert_eq!(failovers(&tb, "primary").await, 0.0);

    // One endpoint heals: traffic returns to the primary pool.
    sick_a.store(false, Ordering::SeqCst);
    wait_state(&tb, &web_a, "healthy").await;
    let maintenance_hits = maintenance.hits();
    for _ in 0..20 {
        let (status, body) = get(&c, &url).await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "web-a"));
    }
    assert_eq!(
        maintenance.hits(),
        maintenance_hits,
        "the backup kept receiving traffic"
    );
    assert_eq!(using_backup(&tb).await, 0.0);
    assert_eq!(failovers(&tb, "primary").await, 1.0);
    assert_eq!(failovers(&tb, "backup").await, 1.0);
}
