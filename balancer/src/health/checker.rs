//! Active HTTP health checks: one task per checked endpoint, each reading the
//! current snapshot for its settings, so reloads change intervals and
//! thresholds without restarting anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::HealthCheck;
use crate::endpoint::{CheckResult, EndpointState};
use crate::health::Transition;
use crate::state::Shared;

/// Runs one check: a fresh connection, `GET path`, and the expected status.
pub async fn check_once(address: &str, settings: &HealthCheck) -> CheckResult {
    let outcome = tokio::time::timeout(settings.timeout, probe(address, settings)).await;
    let (ok, detail) = match outcome {
        Ok(Ok(status)) => (
            settings.expect_status.contains(&status),
            format!("HTTP {status}"),
        ),
        Ok(Err(e)) => (false, e),
        Err(_) => (
            false,
            format!(
                "timed out after {}",
                humantime::format_duration(settings.timeout)
            ),
        ),
    };
    CheckResult {
        at: SystemTime::now(),
        ok,
        detail,
    }
}

async fn probe(address: &str, settings: &HealthCheck) -> Result<u16, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = settings.host.as_deref().unwrap_or(address);
    let req = Request::get(settings.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "usher-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    drop(resp);
    drop(sender);
    conn.abort();
    Ok(status)
}

/// A running check task and the live state it checks.
type CheckTask = (Arc<EndpointState>, JoinHandle<()>);

/// The check tasks, one per (pool, endpoint) with checks configured.
#[derive(Debug, Default)]
pub struct Checkers {
    tasks: Mutex<HashMap<(String, String), CheckTask>>,
}

impl Checkers {
    /// Starts tasks for newly checked endpoints and stops those of endpoints
    /// no longer checked.
    pub fn reconcile(&self, shared: &Arc<Shared>) {
        let snapshot = shared.snapshot.load_full();
        let mut wanted: HashMap<(String, String), Arc<EndpointState>> = HashMap::new();
        for pool in &snapshot.pools {
            if pool.settings.health_check.is_none() {
                continue;
            }
            for m in &pool.members {
                wanted.insert(
                    (pool.settings.name.clone(), m.state.address().to_string()),
                    m.state.clone(),
                );
            }
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // A task checks one live state: if the endpoint was forgotten and
        // created again under the same address, its task starts afresh.
        tasks.retain(|key, (state, task)| {
            let keep =
                wanted.get(key).is_some_and(|w| Arc::ptr_eq(w, state)) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, state) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(run(shared.clone(), state.clone()));
            tasks.insert(key, (state, task));
        }
    }

    /// Stops every task.
    pub fn stop(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (_, t)) in tasks.drain() {
            t.abort();
        }
    }
}

async fn run(shared: Arc<Shared>, state: Arc<EndpointState>) {
    loop {
        let settings = {
            let snapshot = shared.snapshot.load();
            match snapshot
                .pool(state.pool())
                .and_then(|p| p.settings.health_check.clone())
            {
                Some(s) => s,
                None => return,
            }
        };
        let result = check_once(state.address(), &settings).await;
        let detail = result.detail.clone();
        // Read after the check, so a reload during it applies.
        let ends_ejection = shared
            .snapshot
            .load()
            .pool(state.pool())
            .is_some_and(|p| p.settings.outlier_detection.active_check_ends_ejection);
        let (transition, unejected) =
            state.record_check(result, &settings, ends_ejection, Instant::now());
        match transition {
            Some(Transition::Up) => {
                tracing::info!(pool = state.pool(), endpoint = state.address(), %detail, "endpoint is healthy")
            }
            Some(Transition::Down) => {
                tracing::warn!(pool = state.pool(), endpoint = state.address(), %detail, "endpoint is unhealthy")
            }
            None => {}
        }
        if unejected {
            tracing::info!(
                pool = state.pool(),
                endpoint = state.address(),
                "active check passed: ejection ended"
            );
        }
        tokio::time::sleep(settings.interval).await;
    }
}
