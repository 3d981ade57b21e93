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
    /// The endpoint id the client's own affinity cookie named, if any.
    presented: Option<String>,
    /// The session tag of the client's own cookie (`id.tag`), if any: the
    /// session's key in `insert` mode.
    tag: Option<String>,
    /// The application cookie's value, in `applicationCookie` mode.
    app_value: Option<String>,
    /// The session left an overloaded pod (`mobility: shared`).
    pub moved: bool,
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

    /// Whether the request will create a session: the pool is sticky and
    /// the request carries none it honours.
    pub fn is_birth(&self, pool: &PoolRuntime) -> bool {
        pool.sticky.is_some() && self.class() == crate::queue::Class::New
    }
}

/// Splits our cookie's value into the endpoint id and the session tag; a
/// tag that is not one we mint (16 hex digits) is dropped, so whatever a
/// client sends never reaches a `Set-Cookie`.
fn split_cookie(value: &str) -> (&str, Option<&str>) {
    let (id, tag) = value.split_once('.').unwrap_or((value, ""));
    let tag = (tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(tag);
    (id, tag)
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
    let cookie = find_cookie(headers, &st.settings.cookie).map(split_cookie);
    let presented = cookie.map(|(id, _)| id.to_string());
    let tag = cookie.and_then(|(_, tag)| tag).map(str::to_string);
    let signed = presented
        .as_deref()
        .and_then(|id| st.endpoint(id, now))
        .filter(|s| s.takes_sticky(now))
        .cloned();
    let Some(app) = &st.settings.application_cookie else {
        return relieve(
            pool,
            Affinity {
                pinned: signed,
                presented,
                tag,
                app_value: None,
                moved: false,
            },
            now,
        );
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
            tag,
            app_value: None,
            moved: false,
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
    relieve(
        pool,
        Affinity {
            pinned,
            presented,
            tag,
            app_value: Some(value),
            moved: false,
        },
        now,
    )
}

/// With `mobility: shared`, moves a session off a pod above the bounded
/// load to the best home among the others (nothing is lost: the LMS keeps
/// the session in a shared store). With `local` mobility sessions stay.
fn relieve(pool: &PoolRuntime, mut affinity: Affinity, now: Instant) -> Affinity {
    let Some(st) = &pool.sticky else {
        return affinity;
    };
    if st.settings.mobility != crate::config::Mobility::Shared {
        return affinity;
    }
    let Some(pinned) = affinity.pinned.clone() else {
        return affinity;
    };
    if !pool.overloaded(&pinned, st.settings.balance_factor, now) {
        return affinity;
    }
    if let Some(to) = pool.relief_for(now, &pinned) {
        affinity.pinned = Some(to);
        affinity.moved = true;
    }
    affinity
}

/// Updates the response after `served` answered: sets our signed cookie
/// naming `served` when the client's is missing or names another endpoint
/// (in `applicationCookie` mode, only while there is an application
/// session: the request carried the application cookie or the response sets
/// it), learns the application cookie, and counts the session on `served`.
pub fn finish(
    pool: &PoolRuntime,
    affinity: &Affinity,
    served: &Arc<EndpointState>,
    secure: bool,
    resp: &mut HeaderMap,
) {
    let Some(st) = &pool.sticky else { return };
    let mut session = true;
    let sessions = &pool.live.sessions;
    if let Some(app) = &st.settings.application_cookie {
        let prefix = format!("{app}=");
        let mut set_now = false;
        let mut ended = false;
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
                    sessions.touch(value, served);
                    set_now = true;
                    // A new id for the same learner (PHP regenerates it at
                    // login): the old one is gone.
                    if let Some(old) = affinity.app_value.as_deref().filter(|old| *old != value) {
                        sessions.end(old);
                        ended = true;
                    }
                } else if let Some(old) = &affinity.app_value {
                    // Logged out: the session no longer counts on its pod.
                    sessions.end(old);
                    ended = true;
                }
            }
        }
        if let Some(value) = &affinity.app_value {
            pool.live
                .learned
                .insert(value.clone(), served.address().to_string());
            if !ended {
                sessions.touch(value, served);
            }
        }
        session = set_now || affinity.app_value.is_some();
    }
    if !session {
        return;
    }
    let id = st.secret.endpoint_id(&pool.settings.name, served.address());
    // In insert mode the session is ours: a tag in the cookie names it.
    let tag = match (&st.settings.application_cookie, &affinity.tag) {
        (Some(_), _) => None,
        (None, Some(tag)) => Some(tag.clone()),
        (None, None) => Some(format!("{:016x}", fastrand::u64(..))),
    };
    if let Some(tag) = &tag {
        sessions.touch(tag, served);
    }
    let same_tag = st.settings.application_cookie.is_some() || affinity.tag.is_some();
    if affinity.presented.as_deref() != Some(id.as_str()) || !same_tag {
        let value = match &tag {
            Some(tag) => format!("{id}.{}", tag.to_ascii_lowercase()),
            None => id,
        };
        resp.append(
            header::SET_COOKIE,
            sticky::set_cookie(
                &st.settings.cookie,
                &value,
                st.settings.ttl.as_secs(),
                secure,
            ),
        );
    }
    if affinity.moved {
        pool.live.metrics.sessions_moved.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::split_cookie;

    #[test]
    fn only_minted_tags_are_kept() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(split_cookie(id), (id, None));
        let with = format!("{id}.00112233aabbccdd");
        assert_eq!(split_cookie(&with), (id, Some("00112233aabbccdd")));
        for junk in [
            "",
            ".",
            ".0.0.1:443",
            ".zz112233aabbccdd",
            ".00112233aabbccdd0",
        ] {
            let v = format!("{id}{junk}");
            assert_eq!(split_cookie(&v), (id, None), "{v}");
        }
        assert_eq!(split_cookie("127.0.0.1:8080"), ("127", None));
    }
}
