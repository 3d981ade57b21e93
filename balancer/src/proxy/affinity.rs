//! Choosing the endpoint a request is pinned to by a sticky session, and
//! the cookie bookkeeping on the response.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use http::header::{self, HeaderValue};

use crate::endpoint::EndpointState;
use crate::snapshot::PoolRuntime;
use crate::sticky::{self, find_cookie};

/// Longest application-cookie value followed; longer ones are ignored, which
/// bounds what a client can make the learned table hold (with its entry cap).
const MAX_APP_COOKIE: usize = 128;

/// What affinity decided for one request.
#[derive(Debug, Default)]
pub struct Affinity {
    /// The endpoint the session is pinned to, if it may serve.
    pub pinned: Option<Arc<EndpointState>>,
    /// The id the client's own affinity cookie named, if any.
    presented: Option<String>,
    /// The application cookie's value, in `applicationCookie` mode.
    app_value: Option<String>,
}

impl Affinity {
    /// The request's class for session-priority admission: established
    /// when it carries a session the balancer honours.
    pub fn class(&self) -> crate::queue::Class {
        if self.pinned.is_some() || self.app_value.is_some() {
            crate::queue::Class::Established
        } else {
            crate::queue::Class::New
        }
    }
}

/// Reads the request's affinity. Draining endpoints keep their sessions
/// until the pool's drain timeout; gone or unhealthy ones lose them.
///
/// The balancer's own signed cookie is honoured first, in both modes: it
/// names the pod, so every replica sharing the secret gives the same answer
/// (Envoy's stateful sessions and HAProxy's `cookie … insert` do the same).
/// In `applicationCookie` mode, a client without it falls back to the pod
/// this replica learned for the application cookie, then to rendezvous
/// hashing.
pub fn resolve(pool: &PoolRuntime, headers: &HeaderMap, now: Instant) -> Affinity {
    let Some(st) = &pool.sticky else {
        return Affinity::default();
    };
    let presented = find_cookie(headers, &st.settings.cookie).map(str::to_string);
    let signed = presented
        .as_deref()
        .and_then(|id| st.endpoint(id, now))
        .filter(|s| s.takes_sticky(now))
        .cloned();
    let Some(app) = &st.settings.application_cookie else {
        return Affinity {
            pinned: signed,
            presented,
            app_value: None,
        };
    };
    let Some(value) = find_cookie(headers, app)
        .filter(|v| v.len() <= MAX_APP_COOKIE)
        .map(str::to_string)
    else {
        // Our cookie without the application's: the session is gone on the
        // pod's side, so the request is placed afresh.
        return Affinity {
            pinned: None,
            presented,
            app_value: None,
        };
    };
    let pinned = signed.or_else(|| {
        let learned = pool.live.learned.get(&value).and_then(|address| {
            st.by_id
                .values()
                .find(|s| s.address() == address)
                .filter(|s| s.takes_sticky(now))
                .cloned()
        });
        learned.or_else(|| {
            // Unknown here and no cookie of ours: rendezvous hashing gives
            // every replica the same answer.
            let available: Vec<&Arc<EndpointState>> = pool
                .members
                .iter()
                .map(|m| &m.state)
                .filter(|s| s.is_available(now))
                .collect();
            let chosen = sticky::rendezvous(&value, available.iter().map(|s| s.address()))?;
            pool.live
                .learned
                .insert(value.clone(), available[chosen].address().to_string());
            Some(available[chosen].clone())
        })
    });
    Affinity {
        pinned,
        presented,
        app_value: Some(value),
    }
}

/// Updates the response after `served` answered: sets our signed cookie
/// naming `served` when the client's is missing or names another endpoint
/// (in `applicationCookie` mode, only while there is an application
/// session: the request carried the application cookie or the response sets
/// it), and learns the application cookie.
pub fn finish(
    pool: &PoolRuntime,
    affinity: &Affinity,
    served: &EndpointState,
    secure: bool,
    resp: &mut HeaderMap,
) {
    let Some(st) = &pool.sticky else { return };
    let mut session = true;
    if let Some(app) = &st.settings.application_cookie {
        let prefix = format!("{app}=");
        let mut set_now = false;
        for v in resp
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v: &HeaderValue| v.to_str().ok())
        {
            if let Some(rest) = v.trim_start().strip_prefix(&prefix) {
                let value = rest
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_matches('"');
                if !value.is_empty() && value != "deleted" && value.len() <= MAX_APP_COOKIE {
                    pool.live
                        .learned
                        .insert(value.to_string(), served.address().to_string());
                    set_now = true;
                }
            }
        }
        if let Some(value) = &affinity.app_value {
            pool.live
                .learned
                .insert(value.clone(), served.address().to_string());
        }
        session = set_now || affinity.app_value.is_some();
    }
    if !session {
        return;
    }
    let id = st.secret.endpoint_id(&pool.settings.name, served.address());
    if affinity.presented.as_deref() != Some(id.as_str()) {
        resp.append(
            header::SET_COOKIE,
            sticky::set_cookie(&st.settings.cookie, &id, st.settings.ttl.as_secs(), secure),
        );
    }
}
