//! Header rewriting: hop-by-hop stripping, `X-Forwarded-*` and `X-Request-Id`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // A client cannot strip what the proxy itself relies on by naming it.
        if name != header::HOST && name != X_REQUEST_ID {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether a request asks to upgrade the connection (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Adds the forwarding headers: appends the peer to `X-Forwarded-For`, and
/// sets `X-Forwarded-Proto` and `X-Forwarded-Host` (client-sent values of
/// these two are replaced, never trusted).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    host: Option<&str>,
) {
    let peer = peer.to_canonical().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => headers.insert(X_FORWARDED_HOST.clone(), v),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// The request id: the client's if it is sane (1–128 visible ASCII
/// characters), else a new random one. It is set on the request.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let id = HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
        .expect("hex is a valid header value");
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// The request host, lower case and without port.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<String> {
    let raw = uri.authority().map(|a| a.host().to_string()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
    })?;
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// Why a request is refused with 400 before routing, as HAProxy does: the
/// target host must be unambiguous and carry no credentials.
pub fn malformed_target(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    // userinfo (`user:pass@host`) has no place in a request target (RFC 9110 §4.2.4).
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Some("userinfo in the request target");
    }
    if let Some(h) = host {
        let Ok(text) = h.to_str() else {
            return Some("a Host header that is not text");
        };
        match text.parse::<http::uri::Authority>() {
            Ok(a) if !a.as_str().contains('@') && !a.host().is_empty() => {}
            _ => return Some("a Host header that is not host[:port]"),
        }
    }
    // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/2 carries :authority.
    if version == http::Version::HTTP_11 && host.is_none() && uri.authority().is_none() {
        return Some("an HTTP/1.1 request without Host");
    }
    None
}

fn strip_port(host: &str) -> String {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_targets() {
        use http::Version;
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        let hosts = |list: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in list {
                h.append(header::HOST, HeaderValue::from_static(v));
            }
            h
        };
        let v11 = Version::HTTP_11;
        assert_eq!(
            malformed_target(v11, &uri("/"), &hosts(&["lms.example.edu"])),
            None
        );
        assert_eq!(
            malformed_target(v11, &uri("/"), &hosts(&["lms:8080"])),
            None
        );
        assert_eq!(
            malformed_target(v11, &uri("/"), &hosts(&["[::1]:8080"])),
            None
        );
        assert!(malformed_target(v11, &uri("/"), &hosts(&["a", "b"])).is_some());
        assert!(malformed_target(v11, &uri("/"), &hosts(&["u:p@lms"])).is_some());
        assert!(malformed_target(v11, &uri("http://u:p@lms/x"), &hosts(&["lms"])).is_some());
        assert!(malformed_target(v11, &uri("/"), &hosts(&[])).is_some());
        assert_eq!(
            malformed_target(Version::HTTP_10, &uri("/"), &hosts(&[])),
            None
        );
        assert_eq!(
            malformed_target(Version::HTTP_2, &uri("https://lms/x"), &hosts(&[])),
            None
        );
        assert_eq!(
            malformed_target(v11, &uri("http://lms/x"), &hosts(&[])),
            None
        );
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn connection_cannot_strip_host_or_request_id() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("host, x-request-id, x-drop"),
        );
        h.insert("host", HeaderValue::from_static("lms.example.edu"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert("x-drop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h["host"], "lms.example.edu");
        assert_eq!(h["x-request-id"], "abc");
        assert!(!h.contains_key("x-drop"));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            "http",
            Some("lms.example.edu"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "lms.example.edu");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::ffff:10.0.0.1".parse().unwrap(), "https", None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
        let other = ensure_request_id(&mut HeaderMap::new());
        assert_ne!(id, other);
    }

    #[test]
    fn hosts() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("LMS.Example.edu:8443"));
        assert_eq!(
            request_host(&"/x".parse().unwrap(), &h).as_deref(),
            Some("lms.example.edu")
        );
        h.insert("host", HeaderValue::from_static("[::1]:80"));
        assert_eq!(
            request_host(&"/x".parse().unwrap(), &h).as_deref(),
            Some("::1")
        );
        let uri: http::Uri = "https://a.example.edu/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &HeaderMap::new()).as_deref(),
            Some("a.example.edu")
        );
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&h));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(&h));
    }
}
