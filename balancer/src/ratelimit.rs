//! Per-client token buckets, and finding the client's address behind trusted proxies.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Token buckets by client address. Memory is bounded: a bucket idle long
/// enough to have refilled is evicted (it would be full anyway), and the
/// number of buckets is capped.
pub struct Limiter {
    settings: RateLimit,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<TokenBucket>>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The longest wait a refused request is told about.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

impl Limiter {
    /// Most client addresses tracked at once.
    pub const MAX_CLIENTS: u64 = 200_000;

    /// A limiter for `settings`.
    pub fn new(settings: &RateLimit) -> Self {
        let refill = Duration::from_secs_f64(
            (settings.burst / settings.requests_per_second).clamp(0.001, 86_400.0),
        );
        Self {
            settings: settings.clone(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(Self::MAX_CLIENTS)
                .time_to_idle(refill.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Takes a token for `client`, or says how long to wait.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let bucket = self.buckets.get_with(client, || {
            Arc::new(Mutex::new(TokenBucket::new(self.settings.burst, now)))
        });
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.try_take(now, self.settings.requests_per_second, self.settings.burst)
    }

    /// Buckets held now (after pending evictions).
    pub fn tracked(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

/// A token bucket refilled at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            // Bounded: a rate too small to refill in a day (refused by
            // validation anyway) must not overflow a Duration.
            Err(Duration::try_from_secs_f64((1.0 - self.tokens) / rate)
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT))
        } else {
            Err(Duration::from_secs(3600))
        }
    }
}

/// Whether `ip` is in any of the `trusted` networks.
pub fn is_trusted(ip: IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the socket peer, unless the peer is a trusted
/// proxy, in which case `X-Forwarded-For` is read from the right, skipping
/// trusted proxies, and the first untrusted address is the client. A client
/// connecting directly can therefore never choose its own address.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in xff.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(client, trusted) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0, 10.0, 3.0).is_ok());
        }
        let wait = b.try_take(t0, 10.0, 3.0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6);
        assert!(
            b.try_take(t0 + Duration::from_millis(100), 10.0, 3.0)
                .is_ok()
        );
        assert!(
            b.try_take(t0 + Duration::from_millis(100), 10.0, 3.0)
                .is_err()
        );
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.try_take(later, 10.0, 3.0).is_ok());
        }
        assert!(b.try_take(later, 10.0, 3.0).is_err());
    }

    #[test]
    fn limiter_is_per_client_and_evicts_idle_buckets() {
        let limiter = Limiter::new(&RateLimit {
            requests_per_second: 1000.0,
            burst: 2.0,
        });
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_err());
        assert!(
            limiter.check(b, t0).is_ok(),
            "another client has its own bucket"
        );
        assert_eq!(limiter.tracked(), 2);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(limiter.tracked(), 0, "idle buckets are evicted");
    }

    #[test]
    fn zero_rate_never_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, t0);
        assert!(b.try_take(t0, 0.0, 1.0).is_ok());
        assert!(b.try_take(t0 + Duration::from_secs(100), 0.0, 1.0).is_err());
    }

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            client_ip(peer, Some("1.2.3.4"), &nets(&["10.0.0.0/8"])),
            peer
        );
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        // spoofed-by-client, real client, inner proxy
        let xff = "6.6.6.6, 203.0.113.9, 10.1.1.1";
        assert_eq!(
            client_ip(peer, Some(xff), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, None, &trusted), peer);
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_ip(peer, Some("junk, 10.2.2.2"), &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
        // IPv4-mapped IPv6 peers are matched as IPv4.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, Some("203.0.113.1"), &trusted),
            "203.0.113.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_vanishing_rate_gives_a_bounded_wait_instead_of_a_panic() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, t0);
        assert!(b.try_take(t0, 1.0e-30, 1.0).is_ok());
        assert_eq!(b.try_take(t0, 1.0e-30, 1.0), Err(MAX_WAIT));
        assert_eq!(b.try_take(t0, f64::MIN_POSITIVE, 1.0), Err(MAX_WAIT));
    }
}
