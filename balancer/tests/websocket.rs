//! WebSocket upgrades through the balancer, over real sockets: frames echo
//! both ways and the tunnel counts as in flight while it is open.

mod common;

use std::time::Duration;

use common::{Backend, TestBalancer, config, status};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::Message;

/// A backend that accepts WebSocket upgrades and echoes every text and
/// binary message; anything else gets `400`.
async fn echo_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move { common::websocket_echo(req) }).await
}

/// `inFlight` of `endpoint` in pool `web` per `/status`.
async fn in_flight(tb: &TestBalancer, endpoint: &str) -> i64 {
    let s = status(tb).await;
    let pool = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .expect("pool web in /status");
    let ep = pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint)
        .unwrap_or_else(|| panic!("endpoint {endpoint} missing from /status: {s}"));
    ep["inFlight"]
        .as_i64()
        .unwrap_or_else(|| panic!("inFlight is not a number: {ep}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_echo_through_the_balancer_and_count_in_flight() {
    let backend = echo_backend().await;
    let tb = TestBalancer::start(&config(&[&backend], "")).await;
    let endpoint = backend.address();
    assert_eq!(in_flight(&tb, &endpoint).await, 0, "nothing open yet");

    let url = tb.url("/course/42/chat").replacen("http://", "ws://", 1);
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("WebSocket handshake timed out")
    .expect("WebSocket handshake through the balancer failed");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(
        resp.headers().contains_key("x-request-id"),
        "the balancer tags the upgrade response: {:?}",
        resp.headers()
    );
    assert_eq!(backend.hits(), 1, "the handshake reached the backend once");

    // The tunnel's accounting is taken before the 101 goes out.
    assert_eq!(
        in_flight(&tb, &endpoint).await,
        1,
        "an open WebSocket is in flight on its endpoint"
    );

    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let messages = vec![
        Message::text("hello from the quiz page"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("héllo ✓ — unicode survives"),
        Message::binary(big),
        Message::text(""),
        Message::binary(Vec::<u8>::new()),
    ];
    // One at a time...
    for msg in &messages {
        ws.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo timed out")
            .expect("stream ended early")
            .unwrap();
        assert_eq!(&echoed, msg);
    }
    // ...and pipelined: order is kept both ways.
    for i in 0..20u32 {
        let msg = if i % 2 == 0 {
            Message::text(format!("burst {i}"))
        } else {
            Message::binary(i.to_be_bytes().to_vec())
        };
        ws.feed(msg).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..20u32 {
        let expected = if i % 2 == 0 {
            Message::text(format!("burst {i}"))
        } else {
            Message::binary(i.to_be_bytes().to_vec())
        };
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo timed out")
            .expect("stream ended")
            .unwrap();
        assert_eq!(echoed, expected);
    }

    assert_eq!(
        in_flight(&tb, &endpoint).await,
        1,
        "still in flight while the socket stays open"
    );
    assert_eq!(
        backend.hits(),
        1,
        "frames are tunnelled, not sent as new requests"
    );

    // Close handshake: the backend answers the close frame and hangs up.
    ws.close(None).await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(_)) | Err(_) => {}
                Ok(other) => panic!("unexpected frame after close: {other:?}"),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the close handshake did not complete");
    drop(ws);

    let released = common::eventually(Duration::from_secs(10), || async {
        in_flight(&tb, &endpoint).await == 0
    })
    .await;
    assert!(
        released.is_some(),
        "inFlight stayed at {} after the WebSocket closed",
        in_flight(&tb, &endpoint).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_vanishing_releases_the_endpoint() {
    let backend = echo_backend().await;
    let tb = TestBalancer::start(&config(&[&backend], "")).await;
    let endpoint = backend.address();

    let url = tb.url("/ws").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("handshake timed out")
    .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("ping"));
    assert_eq!(in_flight(&tb, &endpoint).await, 1);

    // The learner closes the laptop: the TCP connection drops without a close frame.
    drop(ws);
    let released = common::eventually(Duration::from_secs(10), || async {
        in_flight(&tb, &endpoint).await == 0
    })
    .await;
    assert!(
        released.is_some(),
        "inFlight stayed at {} after the client vanished",
        in_flight(&tb, &endpoint).await
    );
}
