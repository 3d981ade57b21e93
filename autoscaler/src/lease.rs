//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does
//! it: every update is guarded by the Lease's `resourceVersion`, a follower
//! takes over only after the holder has not renewed for a whole lease
//! duration *as measured on the follower's own clock* (no clock-skew trust),
//! and a leader that cannot renew within the renew deadline stops acting.
//!
//! [`Elector`] is the pure core; [`run`] is the loop that talks to the API.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Timing of the election (client-go's defaults are 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops acting.
    pub renew_deadline: Duration,
    /// Time between attempts.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the Lease says, reduced to what the election needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The holder (`None` or empty: released).
    pub holder: Option<String>,
    /// The holder's last renewal, as written (only compared for change).
    pub renew_time: Option<String>,
    /// The lease duration the holder asked for.
    pub duration: Option<Duration>,
}

/// What to do with the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No Lease exists: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Released or expired: take it over.
    Acquire,
    /// Someone else holds a live lease.
    Follow {
        /// Who.
        holder: String,
    },
}

/// The election's memory: who we are and when the Lease last changed.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    timing: Timing,
    observed: Option<(Record, Instant)>,
    renewed_at: Option<Instant>,
}

impl Elector {
    /// An elector for `identity`.
    pub fn new(identity: &str, timing: Timing) -> Self {
        Self {
            identity: identity.to_string(),
            timing,
            observed: None,
            renewed_at: None,
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Decides what to do given the Lease as read at `now`.
    pub fn plan(&mut self, record: Option<&Record>, now: Instant) -> Plan {
        let Some(record) = record else {
            return Plan::Create;
        };
        let holder = record.holder.clone().filter(|h| !h.is_empty());
        match holder {
            None => Plan::Acquire,
            Some(h) if h == self.identity => Plan::Renew,
            Some(h) => {
                // Expiry is judged by how long the record has been unchanged
                // on our clock, not by the holder's timestamps.
                let since = match &self.observed {
                    Some((seen, at)) if seen == record => *at,
                    _ => {
                        self.observed = Some((record.clone(), now));
                        now
                    }
                };
                let duration = record.duration.unwrap_or(self.timing.lease_duration);
                if now.duration_since(since) >= duration {
                    Plan::Acquire
                } else {
                    Plan::Follow { holder: h }
                }
            }
        }
    }

    /// Records a successful create, renew or acquire at `now`.
    pub fn held(&mut self, now: Instant) {
        self.renewed_at = Some(now);
        self.observed = None;
    }

    /// Records that someone else holds the lease (or we lost a race).
    pub fn lost(&mut self) {
        self.renewed_at = None;
    }

    /// Whether we may act at `now`: we renewed within the renew deadline.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.renewed_at
            .is_some_and(|at| now.duration_since(at) < self.timing.renew_deadline)
    }
}

/// Reads a Lease into a [`Record`].
pub fn record_of(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        duration: spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs),
    }
}

/// The Lease body for holding it, keeping `resourceVersion` so the update
/// fails on a concurrent change.
fn holding(
    name: &str,
    existing: Option<&Lease>,
    identity: &str,
    timing: Timing,
    transition: bool,
) -> Lease {
    let now = MicroTime(Timestamp::now());
    let old = existing.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions = old.lease_transitions.unwrap_or(0) + i32::from(transition);
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version: existing.and_then(|l| l.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: if transition || old.acquire_time.is_none() {
                Some(now.clone())
            } else {
                old.acquire_time
            },
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

/// Runs the election on Lease `name` until `shutdown` turns true, publishing
/// leadership on `leader`. On shutdown a held lease is released so another
/// instance takes over at once.
pub async fn run(
    api: Api<Lease>,
    name: String,
    mut elector: Elector,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let timing = elector.timing;
    loop {
        let now = Instant::now();
        let attempt = async {
            let existing = api.get_opt(&name).await?;
            let record = existing.as_ref().map(record_of);
            let plan = elector.plan(record.as_ref(), now);
            let pp = PostParams::default();
            match &plan {
                Plan::Create => {
                    api.create(&pp, &holding(&name, None, elector.identity(), timing, true))
                        .await?;
                }
                Plan::Renew => {
                    let body = holding(&name, existing.as_ref(), elector.identity(), timing, false);
                    api.replace(&name, &pp, &body).await?;
                }
                Plan::Acquire => {
                    let body = holding(&name, existing.as_ref(), elector.identity(), timing, true);
                    api.replace(&name, &pp, &body).await?;
                }
                Plan::Follow { .. } => {}
            }
            Ok::<_, kube::Error>(plan)
        };
        match attempt.await {
            Ok(Plan::Follow { holder }) => {
                if *leader.borrow() {
                    tracing::warn!(%holder, "lost the leader lease");
                }
                elector.lost();
            }
            Ok(plan) => {
                if !*leader.borrow() {
                    tracing::info!(identity = elector.identity(), ?plan, lease = %name, "became leader");
                }
                elector.held(now);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Someone else wrote first; read again next round.
                tracing::debug!(lease = %name, "lease update conflict");
            }
            Err(e) => tracing::warn!(lease = %name, error = %e, "leader election request failed"),
        }
        leader.send_if_modified(|l| {
            let now_leader = elector.is_leader(Instant::now());
            std::mem::replace(l, now_leader) != now_leader
        });
        tokio::select! {
            _ = tokio::time::sleep(timing.retry_period) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    // Release: an empty holder lets a follower acquire on its next round.
    if *leader.borrow() {
        leader.send_replace(false);
        if let Ok(Some(lease)) = api.get_opt(&name).await
            && record_of(&lease).holder.as_deref() == Some(elector.identity())
        {
            let mut released = lease.clone();
            if let Some(spec) = released.spec.as_mut() {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
            }
            match api.replace(&name, &PostParams::default(), &released).await {
                Ok(_) => tracing::info!(lease = %name, "released the leader lease"),
                Err(e) => tracing::warn!(lease = %name, error = %e, "could not release the lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn held_by(holder: &str, renew: &str) -> Record {
        Record {
            holder: Some(holder.into()),
            renew_time: Some(renew.into()),
            duration: Some(Duration::from_secs(15)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_lease_creates_and_our_lease_renews() {
        let mut e = Elector::new("a", timing());
        let t0 = Instant::now();
        assert_eq!(e.plan(None, t0), Plan::Create);
        assert!(!e.is_leader(t0));
        e.held(t0);
        assert!(e.is_leader(t0));
        assert_eq!(e.plan(Some(&held_by("a", "t1")), t0), Plan::Renew);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_takes_over_only_after_the_record_is_unchanged_for_a_lease_duration() {
        let mut e = Elector::new("b", timing());
        let t0 = Instant::now();
        let r1 = held_by("a", "10:00:00");
        assert_eq!(e.plan(Some(&r1), t0), Plan::Follow { holder: "a".into() });
        assert_eq!(
            e.plan(Some(&r1), t0 + Duration::from_secs(14)),
            Plan::Follow { holder: "a".into() }
        );
        // A renewal restarts the clock.
        let r2 = held_by("a", "10:00:14");
        assert_eq!(
            e.plan(Some(&r2), t0 + Duration::from_secs(16)),
            Plan::Follow { holder: "a".into() }
        );
        assert_eq!(
            e.plan(Some(&r2), t0 + Duration::from_secs(30)),
            Plan::Follow { holder: "a".into() }
        );
        assert_eq!(
            e.plan(Some(&r2), t0 + Duration::from_secs(31)),
            Plan::Acquire
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_acquired_at_once_and_the_holders_duration_counts() {
        let mut e = Elector::new("b", timing());
        let t0 = Instant::now();
        let released = Record {
            holder: Some(String::new()),
            ..held_by("x", "t")
        };
        assert_eq!(e.plan(Some(&released), t0), Plan::Acquire);
        let short = Record {
            duration: Some(Duration::from_secs(1)),
            ..held_by("a", "t")
        };
        assert_eq!(
            e.plan(Some(&short), t0),
            Plan::Follow { holder: "a".into() }
        );
        assert_eq!(
            e.plan(Some(&short), t0 + Duration::from_secs(1)),
            Plan::Acquire
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_within_the_renew_deadline() {
        let mut e = Elector::new("a", timing());
        let t0 = Instant::now();
        e.held(t0);
        assert!(e.is_leader(t0 + Duration::from_secs(9)));
        assert!(!e.is_leader(t0 + Duration::from_secs(10)));
        e.held(t0 + Duration::from_secs(2));
        e.lost();
        assert!(!e.is_leader(t0 + Duration::from_secs(3)));
    }
}
