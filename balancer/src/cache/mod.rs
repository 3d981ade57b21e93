//! Micro-caching of anonymous GETs for a second or so: enough to shield the
//! pods from the login-page and course-landing-page stampede at class start.
//! Concurrent misses for one key are collapsed into a single upstream request.

pub mod policy;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};

use crate::config::CacheSettings;
use crate::proxy::upstream::{BoxError, ProxyBody};
use crate::snapshot::CacheResult;

/// A stored response.
#[derive(Debug)]
pub struct Cached {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    ttl: Duration,
}

impl Cached {
    fn to_response(&self, result: &'static str) -> Response<ProxyBody> {
        let mut resp = Response::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        let age = self.stored.elapsed().as_secs();
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(result));
        resp
    }
}

static X_CACHE: HeaderName = HeaderName::from_static("x-usher-cache");

/// Sets `x-usher-cache` on a response that did not come from the cache.
pub fn mark(mut resp: Response<ProxyBody>, result: &'static str) -> Response<ProxyBody> {
    resp.headers_mut()
        .insert(X_CACHE.clone(), HeaderValue::from_static(result));
    resp
}

struct TtlExpiry;

impl moka::Expiry<String, Arc<Cached>> for TtlExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Cached>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A route's micro-cache.
pub struct MicroCache {
    settings: CacheSettings,
    entries: moka::future::Cache<String, Arc<Cached>>,
    /// The `Vary` header names last seen for each URL.
    vary: moka::sync::Cache<String, Arc<Vec<HeaderName>>>,
}

impl std::fmt::Debug for MicroCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why the leader did not store its response.
#[derive(Debug)]
struct NotStored;

impl MicroCache {
    /// A cache for `settings`.
    pub fn new(settings: &CacheSettings) -> Self {
        Self {
            settings: settings.clone(),
            entries: moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .expire_after(TtlExpiry)
                .build(),
            vary: moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_idle(settings.ttl.max(Duration::from_secs(60)))
                .build(),
        }
    }

    /// Cookies that make a request personal.
    pub fn session_cookies(&self) -> &[String] {
        &self.settings.session_cookies
    }

    fn variant_key(url: &str, names: &[HeaderName], headers: &HeaderMap) -> String {
        let mut key = url.to_string();
        for name in names {
            key.push('\n');
            key.push_str(name.as_str());
            key.push('=');
            for v in headers.get_all(name) {
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                key.push(',');
            }
        }
        key
    }

    /// Answers from the cache, or runs `fetch` once for all concurrent
    /// requests of the same key and stores its response when allowed.
    pub async fn serve<F, Fut>(
        &self,
        url: String,
        headers: &HeaderMap,
        fetch: F,
    ) -> (Response<ProxyBody>, CacheResult)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Response<ProxyBody>>,
    {
        let names = self.vary.get(&url).unwrap_or_default();
        let key = Self::variant_key(&url, &names, headers);
        if let Some(hit) = self.entries.get(&key).await {
            return (hit.to_response("hit"), CacheResult::Hit);
        }
        let fetch = Mutex::new(Some(fetch));
        let mine: Mutex<Option<Response<ProxyBody>>> = Mutex::new(None);
        let ran = AtomicBool::new(false);
        let result = self
            .entries
            .try_get_with(key.clone(), async {
                ran.store(true, Ordering::Relaxed);
                let fetch = fetch
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .expect("fetch runs once");
                let resp = fetch().await;
                match self.store(&url, &names, headers, resp).await {
                    Stored::Here(cached) => Ok(cached),
                    Stored::Elsewhere(resp) | Stored::Not(resp) => {
                        *mine.lock().unwrap_or_else(|p| p.into_inner()) = Some(resp);
                        Err(NotStored)
                    }
                }
            })
            .await;
        let led = ran.load(Ordering::Relaxed);
        match result {
            Ok(cached) if led => (cached.to_response("miss"), CacheResult::Miss),
            Ok(cached) => (cached.to_response("hit"), CacheResult::Collapsed),
            Err(_) => {
                if let Some(resp) = mine.into_inner().unwrap_or_else(|p| p.into_inner()) {
                    return (mark(resp, "miss"), CacheResult::Miss);
                }
                // The leader's response could not be shared: fetch our own.
                let fetch = fetch
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .expect("not run");
                (mark(fetch().await, "bypass"), CacheResult::Bypass)
            }
        }
    }

    /// Buffers `resp` and stores it if its status, directives and size allow.
    async fn store(
        &self,
        url: &str,
        assumed: &[HeaderName],
        req_headers: &HeaderMap,
        resp: Response<ProxyBody>,
    ) -> Stored {
        let Some(ttl) = policy::response_ttl(resp.status(), resp.headers(), self.settings.ttl)
        else {
            return Stored::Not(resp);
        };
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.settings.max_body_bytes) {
            return Stored::Not(resp);
        }
        let (parts, body) = resp.into_parts();
        let mut stream = BodyStream::new(body);
        let mut buf = BytesMut::new();
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(frame) if frame.is_data() => {
                    let data = frame.into_data().unwrap_or_default();
                    buf.extend_from_slice(&data);
                    if buf.len() as u64 > self.settings.max_body_bytes {
                        // Too big to keep: send what was read, then the rest.
                        let head = futures_util::stream::once(async move {
                            Ok::<_, BoxError>(Frame::data(buf.freeze()))
                        });
                        let body = StreamBody::new(head.chain(stream.map(|f| f)));
                        return Stored::Not(Response::from_parts(parts, body.boxed_unsync()));
                    }
                }
                Ok(_trailers) => {}
                Err(e) => {
                    // The upstream failed mid-body: pass on what arrived and the error.
                    let head = futures_util::stream::iter([Ok(Frame::data(buf.freeze())), Err(e)]);
                    return Stored::Not(Response::from_parts(
                        parts,
                        StreamBody::new(head).boxed_unsync(),
                    ));
                }
            }
        }
        let mut headers = parts.headers;
        headers.remove(header::CONNECTION);
        let cached = Arc::new(Cached {
            status: parts.status,
            headers,
            body: buf.freeze(),
            stored: Instant::now(),
            ttl,
        });
        let names = policy::vary_names(&cached.headers).unwrap_or_default();
        if names.as_slice() != assumed {
            self.vary.insert(url.to_string(), Arc::new(names.clone()));
            let key = Self::variant_key(url, &names, req_headers);
            self.entries.insert(key, cached.clone()).await;
            return Stored::Elsewhere(cached.to_response("miss"));
        }
        Stored::Here(cached)
    }
}

enum Stored {
    Here(Arc<Cached>),
    Elsewhere(Response<ProxyBody>),
    Not(Response<ProxyBody>),
}
