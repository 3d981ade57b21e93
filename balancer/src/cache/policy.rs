//! Which requests and responses the micro-cache may serve and store, and for
//! how long: plain functions over methods and headers.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// Whether a request is anonymous and safe to answer from the cache: a GET
/// without `Authorization`, without any of the session cookies, and
/// without `Cache-Control: no-cache`/`no-store` from the client.
pub fn request_cacheable(method: &Method, headers: &HeaderMap, session_cookies: &[String]) -> bool {
    if *method != Method::GET {
        return false;
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return false;
    }
    if session_cookies
        .iter()
        .any(|c| crate::sticky::find_cookie(headers, c).is_some())
    {
        return false;
    }
    !directives(headers, header::CACHE_CONTROL).any(|(d, _)| d == "no-cache" || d == "no-store")
        && !headers
            .get(header::PRAGMA)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"no-cache"))
}

/// How long a response may be cached: `None` unless it is a 200 (or 301,
/// 404, 410) without `Set-Cookie`, `no-store`, `no-cache`, `private` or
/// `Vary: *`. The route's `ttl` is a ceiling; `s-maxage`/`max-age` lower it.
pub fn response_ttl(
    status: StatusCode,
    headers: &HeaderMap,
    route_ttl: Duration,
) -> Option<Duration> {
    if !matches!(status.as_u16(), 200 | 301 | 404 | 410) || headers.contains_key(header::SET_COOKIE)
    {
        return None;
    }
    vary_names(headers)?;
    let mut ttl = route_ttl;
    let mut shared_max_age = None;
    for (d, value) in directives(headers, header::CACHE_CONTROL) {
        match d.as_str() {
            "no-store" | "no-cache" | "private" => return None,
            "s-maxage" => shared_max_age = value.and_then(|v| v.parse::<u64>().ok()),
            "max-age" => {
                if let Some(secs) = value.and_then(|v| v.parse::<u64>().ok()) {
                    ttl = ttl.min(Duration::from_secs(secs));
                }
            }
            _ => {}
        }
    }
    if let Some(secs) = shared_max_age {
        ttl = route_ttl.min(Duration::from_secs(secs));
    }
    (!ttl.is_zero()).then_some(ttl)
}

/// The request headers a response varies on, lower case; `None` for `Vary: *`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(h) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                && !names.contains(&h)
            {
                names.push(h);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// `Cache-Control`-style directives: lower-case names with optional values.
fn directives(
    headers: &HeaderMap,
    name: HeaderName,
) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let (k, v) = match d.split_once('=') {
                Some((k, v)) => (k, Some(v.trim().trim_matches('"').to_string())),
                None => (d, None),
            };
            (k.trim().to_ascii_lowercase(), v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn anonymous_gets_only() {
        let sessions = vec!["MoodleSession".to_string()];
        assert!(request_cacheable(&Method::GET, &h(&[]), &sessions));
        assert!(request_cacheable(
            &Method::GET,
            &h(&[("cookie", "theme=dark")]),
            &sessions
        ));
        assert!(!request_cacheable(&Method::HEAD, &h(&[]), &sessions));
        assert!(!request_cacheable(&Method::POST, &h(&[]), &sessions));
        assert!(!request_cacheable(
            &Method::GET,
            &h(&[("authorization", "Bearer x")]),
            &sessions
        ));
        assert!(!request_cacheable(
            &Method::GET,
            &h(&[("cookie", "a=1; MoodleSession=x")]),
            &sessions
        ));
        assert!(!request_cacheable(
            &Method::GET,
            &h(&[("cache-control", "no-cache")]),
            &sessions
        ));
        assert!(!request_cacheable(
            &Method::GET,
            &h(&[("pragma", "no-cache")]),
            &sessions
        ));
    }

    #[test]
    fn response_ttls() {
        let one = Duration::from_secs(1);
        assert_eq!(response_ttl(StatusCode::OK, &h(&[]), one), Some(one));
        assert_eq!(
            response_ttl(
                StatusCode::OK,
                &h(&[("cache-control", "public, max-age=60")]),
                one
            ),
            Some(one)
        );
        assert_eq!(
            response_ttl(
                StatusCode::OK,
                &h(&[("cache-control", "max-age=2")]),
                Duration::from_secs(10)
            ),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            response_ttl(
                StatusCode::OK,
                &h(&[("cache-control", "max-age=2, s-maxage=5")]),
                Duration::from_secs(10)
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("cache-control", "max-age=0")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("cache-control", "no-store")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("cache-control", "Private")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("cache-control", "no-cache")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("set-cookie", "a=b")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::OK, &h(&[("vary", "*")]), one),
            None
        );
        assert_eq!(
            response_ttl(StatusCode::INTERNAL_SERVER_ERROR, &h(&[]), one),
            None
        );
        assert_eq!(response_ttl(StatusCode::NOT_FOUND, &h(&[]), one), Some(one));
    }

    #[test]
    fn vary() {
        assert_eq!(vary_names(&h(&[])), Some(vec![]));
        let names = vary_names(&h(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "Accept-Encoding"),
        ]))
        .unwrap();
        assert_eq!(
            names,
            vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ]
        );
        assert_eq!(vary_names(&h(&[("vary", "accept, *")])), None);
    }
}
