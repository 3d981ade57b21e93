//! Sticky sessions: an opaque, tamper-evident cookie naming the endpoint a
//! learner is pinned to, and rendezvous hashing for affinity derived from an
//! application cookie (such as Moodle's `MoodleSession`).

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use sha2::Sha256;

/// The secret that makes endpoint ids unforgeable. Share it between balancer
/// replicas so they all honour each other's cookies.
#[derive(Clone)]
pub struct StickySecret(Vec<u8>);

impl std::fmt::Debug for StickySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickySecret(..)")
    }
}

impl StickySecret {
    /// A secret from configured bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// A random secret for this process only.
    pub fn random() -> Self {
        Self((0..32).map(|_| fastrand::u8(..)).collect())
    }

    /// The cookie value naming `address` in `pool`: 32 hex characters of
    /// HMAC-SHA256 over the pool and address. It reveals nothing about the
    /// endpoint, and a client cannot mint one for an endpoint of its choice.
    pub fn endpoint_id(&self, pool: &str, address: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(pool.as_bytes());
        mac.update(b"\n");
        mac.update(address.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// A `Set-Cookie` value pinning the client to `id` for `ttl_seconds`.
pub fn set_cookie(name: &str, id: &str, ttl_seconds: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={id}; Path=/; Max-Age={ttl_seconds}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("cookie names are validated and ids are hex")
}

/// Rendezvous (highest random weight) hashing: the candidate that `key`
/// maps to. Every balancer replica computes the same answer, and removing a
/// candidate only moves the keys that were on it.
pub fn rendezvous<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<usize> {
    use sha2::Digest;
    candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let digest = Sha256::new()
                .chain_update(key)
                .chain_update(b"\n")
                .chain_update(c)
                .finalize();
            let mut score = [0u8; 8];
            score.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(score), i)
        })
        .max()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_secret_bound_and_opaque() {
        let s = StickySecret::new(b"k1".to_vec());
        let id = s.endpoint_id("moodle", "10.0.0.5:8080");
        assert_eq!(id.len(), 32);
        assert!(!id.contains("10.0.0.5"));
        assert_eq!(id, s.endpoint_id("moodle", "10.0.0.5:8080"));
        assert_ne!(id, s.endpoint_id("moodle", "10.0.0.6:8080"));
        assert_ne!(id, s.endpoint_id("canvas", "10.0.0.5:8080"));
        assert_ne!(
            id,
            StickySecret::new(b"k2".to_vec()).endpoint_id("moodle", "10.0.0.5:8080")
        );
        assert_ne!(
            StickySecret::random().endpoint_id("p", "a"),
            StickySecret::random().endpoint_id("p", "a")
        );
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; MoodleSession=abc"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("usher_affinity=\"f00\""),
        );
        assert_eq!(find_cookie(&h, "MoodleSession"), Some("abc"));
        assert_eq!(find_cookie(&h, "usher_affinity"), Some("f00"));
        assert_eq!(find_cookie(&h, "a"), Some("1"));
        assert_eq!(find_cookie(&h, "Moodle"), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let v = set_cookie("usher_affinity", "ab12", 28800, true);
        assert_eq!(
            v,
            "usher_affinity=ab12; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(
            !set_cookie("c", "x", 1, false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }

    #[test]
    fn rendezvous_moves_only_keys_of_a_removed_candidate() {
        let all = ["a:1", "b:1", "c:1", "d:1"];
        let fewer = ["a:1", "b:1", "d:1"];
        let mut moved = 0;
        for k in 0..2000 {
            let key = format!("session-{k}");
            let before = all[rendezvous(&key, all).unwrap()];
            let after = fewer[rendezvous(&key, fewer).unwrap()];
            if before != "c:1" {
                assert_eq!(before, after, "{key} moved without cause");
            } else {
                moved += 1;
            }
        }
        assert!(
            (350..650).contains(&moved),
            "about a quarter lived on c: {moved}"
        );
        assert_eq!(rendezvous("x", std::iter::empty::<&str>()), None);
    }
}
