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

impl PartialEq for StickySecret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// A pool's signing secrets over time: the one in force, and the one it
/// replaced, still accepted (never issued) for one cookie lifetime after a
/// rotation, so learners pinned just before it keep their pod.
#[derive(Debug, Clone)]
pub struct SecretRing {
    current: StickySecret,
    /// Made up by this process (no secret configured).
    local: bool,
    previous: Option<(StickySecret, std::time::Instant)>,
}

/// The secrets a snapshot signs and checks with.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs new cookies and checks them.
    pub current: StickySecret,
    /// Still accepted until the instant, after a rotation.
    pub previous: Option<(StickySecret, std::time::Instant)>,
}

impl SecretRing {
    /// The ring for a pool's first config: `configured`, or a secret of this
    /// process only (logged once by the caller).
    pub fn new(configured: Option<&str>) -> Self {
        match configured {
            Some(s) => Self {
                current: StickySecret::new(s.as_bytes().to_vec()),
                local: false,
                previous: None,
            },
            None => Self {
                current: StickySecret::random(),
                local: true,
                previous: None,
            },
        }
    }

    /// Whether the secret is this process's own.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Applies a (re)loaded config at `now`: a changed secret becomes
    /// current and the old one stays accepted for `ttl`. A process-local
    /// secret persists across reloads while none is configured.
    pub fn update(
        &mut self,
        configured: Option<&str>,
        ttl: std::time::Duration,
        now: std::time::Instant,
    ) -> Keys {
        let wanted = match configured {
            Some(s) => Some(StickySecret::new(s.as_bytes().to_vec())),
            None if self.local => None,
            None => Some(StickySecret::random()),
        };
        if let Some(new) = wanted
            && new != self.current
        {
            let old = std::mem::replace(&mut self.current, new);
            self.previous = Some((old, now.checked_add(ttl).unwrap_or(now)));
            self.local = configured.is_none();
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            self.previous = None;
        }
        Keys {
            current: self.current.clone(),
            previous: self.previous.clone(),
        }
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
    fn a_rotated_secret_is_accepted_for_one_cookie_lifetime() {
        let t0 = std::time::Instant::now();
        let ttl = std::time::Duration::from_secs(3600);
        let mut ring = SecretRing::new(Some("first-secret-0123456789"));
        assert!(!ring.is_local());
        let k = ring.update(Some("first-secret-0123456789"), ttl, t0);
        assert!(k.previous.is_none());
        let k = ring.update(Some("second-secret-0123456789"), ttl, t0);
        assert_eq!(
            k.current,
            StickySecret::new(b"second-secret-0123456789".to_vec())
        );
        let (old, until) = k.previous.unwrap();
        assert_eq!(old, StickySecret::new(b"first-secret-0123456789".to_vec()));
        assert_eq!(until, t0 + ttl);
        // Still there within the lifetime, gone after it.
        let later = t0 + ttl / 2;
        assert!(
            ring.update(Some("second-secret-0123456789"), ttl, later)
                .previous
                .is_some()
        );
        assert!(
            ring.update(Some("second-secret-0123456789"), ttl, t0 + ttl)
                .previous
                .is_none()
        );
    }

    #[test]
    fn a_local_secret_persists_across_reloads() {
        let t0 = std::time::Instant::now();
        let ttl = std::time::Duration::from_secs(60);
        let mut ring = SecretRing::new(None);
        assert!(ring.is_local());
        let a = ring.update(None, ttl, t0).current;
        let b = ring.update(None, ttl, t0).current;
        assert_eq!(a, b);
        // Configuring one later rotates away from it.
        let k = ring.update(Some("configured-secret-123456"), ttl, t0);
        assert!(!ring.is_local());
        assert_eq!(k.previous.unwrap().0, a);
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
