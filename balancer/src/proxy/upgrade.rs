//! Connection upgrades (WebSocket): the handshake is forwarded on a fresh
//! upstream connection, then bytes are copied both ways. The tunnel counts as
//! in flight on its endpoint for as long as it is open.

use std::time::Instant;

use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::{Guarded, boxed, empty, local};
use super::headers;
use super::upstream::ProxyBody;
use crate::endpoint::InFlight;
use crate::snapshot::PoolRuntime;
use crate::state::Shared;

/// Forwards an upgrade request and, on `101`, splices the two connections.
pub async fn forward(
    shared: &Shared,
    pool: &PoolRuntime,
    parts: Parts,
    downstream: OnUpgrade,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let settings = &pool.settings;
    let state = in_flight.endpoint().clone();
    let address = state.address().to_string();
    let may_eject = || pool.may_eject(Instant::now());

    let stream = match tokio::time::timeout(settings.timeouts.connect, TcpStream::connect(&address))
        .await
    {
        Ok(Ok(s)) => s,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timeout".to_string(),
            };
            state.record_outcome(
                Err(true),
                Instant::now(),
                &settings.outlier_detection,
                may_eject,
            );
            tracing::warn!(pool = %settings.name, endpoint = %address, %error, "upgrade connect failed");
            return local(
                StatusCode::BAD_GATEWAY,
                "usher: the upstream server failed to answer",
            );
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(pool = %settings.name, endpoint = %address, error = %e, "upgrade handshake failed");
            return local(
                StatusCode::BAD_GATEWAY,
                "usher: the upstream server failed to answer",
            );
        }
    };
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = Request::new(empty());
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(_) => return local(StatusCode::BAD_REQUEST, "usher: invalid request target"),
    };
    *up.headers_mut() = parts.headers;

    let mut resp = match tokio::time::timeout(settings.timeouts.response, sender.send_request(up))
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            state.record_outcome(
                Err(false),
                Instant::now(),
                &settings.outlier_detection,
                may_eject,
            );
            tracing::warn!(pool = %settings.name, endpoint = %address, error = %e, "upgrade request failed");
            return local(
                StatusCode::BAD_GATEWAY,
                "usher: the upstream server failed to answer",
            );
        }
        Err(_) => {
            state.record_outcome(
                Err(false),
                Instant::now(),
                &settings.outlier_detection,
                may_eject,
            );
            return local(
                StatusCode::GATEWAY_TIMEOUT,
                "usher: the upstream server did not answer in time",
            );
        }
    };
    let status = resp.status();
    state.record_outcome(
        Ok(status.as_u16()),
        Instant::now(),
        &settings.outlier_detection,
        may_eject,
    );

    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        let mut resp = Response::from_parts(rparts, boxed(Guarded::new(rbody, in_flight)));
        resp.extensions_mut().insert(super::Served(state));
        return resp;
    }

    let upstream = hyper::upgrade::on(&mut resp);
    let pool_name = settings.name.clone();
    shared.tasks.spawn(async move {
        let _in_flight = in_flight;
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let mut down = TokioIo::new(down);
                let mut up = TokioIo::new(up);
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(pool = %pool_name, endpoint = %address, error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::warn!(pool = %pool_name, endpoint = %address, error = %e, "upgrade failed"),
        }
    });
    let (rparts, _) = resp.into_parts();
    let mut resp = Response::from_parts(rparts, empty());
    resp.extensions_mut().insert(super::Served(state));
    resp
}
