//! The admin listener over real sockets: the bearer token, health and
//! readiness, `/status` and `/metrics`.

mod common;

use bytes::Bytes;
use common::{Backend, TestBalancer, client, get, send};
use http::{Request, StatusCode, header};
use http_body_util::Full;

fn yaml(backend: &Backend, token: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\n  token: \"{token}\"\nroutes:\n  - pool: web\npools:\n  web:\n    endpoints:\n      static:\n        - address: \"{}\"\n          weight: 7\n",
        backend.address()
    )
}

async fn admin_get(
    tb: &TestBalancer,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(tb.admin_url(path));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(&client(), req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_metrics_and_status_but_not_health() {
    let backend = Backend::named("a").await;
    let token = "s3cret-admin-token-0123456789";
    let tb = TestBalancer::start(&yaml(&backend, token)).await;

    for path in ["/metrics", "/status"] {
        let (status, headers, _) = admin_get(&tb, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        let (status, _, _) = admin_get(&tb, path, Some("s3cret-admin-token-012345678")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        let (status, _, _) = admin_get(&tb, path, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{path} with the token");
    }
    assert_eq!(admin_get(&tb, "/healthz", None).await.0, StatusCode::OK);
    assert_eq!(admin_get(&tb, "/readyz", None).await.0, StatusCode::OK);
    assert_eq!(
        admin_get(&tb, "/nothing", Some(token)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = send(
        &client(),
        Request::post(tb.admin_url("/metrics"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_pools_and_endpoints_with_their_live_state() {
    let backend = Backend::named("a").await;
    let token = "another-long-admin-token-42";
    let tb = TestBalancer::start(&yaml(&backend, token)).await;
    for _ in 0..3 {
        assert_eq!(get(&client(), &tb.url("/")).await.unwrap().0, 200);
    }
    let (_, headers, body) = admin_get(&tb, "/status", Some(token)).await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["ready"], true);
    assert!(s["configFile"].as_str().unwrap().ends_with("balancer.yaml"));
    let pool = &s["pools"][0];
    assert_eq!(pool["name"], "web");
    assert_eq!(pool["queued"], 0);
    assert_eq!(pool["usingBackup"], false);
    let e = &pool["endpoints"][0];
    assert_eq!(e["address"], backend.address());
    assert_eq!(e["weight"], 7);
    assert_eq!(e["state"], "healthy");
    assert_eq!(e["inFlight"], 0);
    assert!(e["ejectedForSeconds"].is_null() && e["lastCheck"].is_null());

    let (_, headers, metrics) = admin_get(&tb, "/metrics", Some(token)).await;
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let endpoint = format!("endpoint=\"{}\"", backend.address());
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("usher_balancer_upstream_responses_total{")
                && l.contains(&endpoint)
                && l.contains("2xx")
        })
        .unwrap_or_else(|| panic!("no 2xx counter:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        metrics.contains("usher_balancer_pool_responses_total{pool=\"web\",code_class=\"2xx\"} 3")
    );
    assert!(metrics.contains("usher_balancer_config_reloads_total{result=\"success\"} 1"));
    assert!(metrics.contains("usher_balancer_endpoint_state{pool=\"web\","));
    assert!(metrics.trim_end().ends_with("# EOF"));
}
