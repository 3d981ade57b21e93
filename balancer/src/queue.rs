//! The surge queue: when every endpoint of a pool is at its in-flight limit,
//! requests wait and are handed a reserved slot as soon as one frees,
//! instead of piling onto pods that are already full.
//!
//! A request pinned to an endpoint by a sticky session waits for a slot on
//! that endpoint; others take a slot anywhere. With session priority on,
//! requests of established sessions are served before new sessions (logins),
//! and when the queue is full an established request takes the place of the
//! newest new-session waiter, which is turned away at once: learners in the
//! middle of an attempt go first (HAProxy needs `set-priority-class` rules for
//! this). Within a class the order is first come, first served.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use tokio::sync::oneshot;

use crate::endpoint::{EndpointState, InFlight};

/// Who a waiting request is, for session-priority admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It carries a valid affinity or application cookie.
    Established = 0,
    /// No session yet (typically a login).
    New = 1,
}

/// Why a waiter was turned away before its slot came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Displaced;

/// What a waiter receives: a slot, or word that it lost its place.
pub type Handoff = Result<InFlight, Displaced>;

#[derive(Debug)]
struct Waiter {
    tx: oneshot::Sender<Handoff>,
    /// The endpoint a sticky session pins it to.
    target: Option<Arc<EndpointState>>,
    /// When it joined the queue.
    since: Instant,
}

/// A waiter as [`SurgeQueue::dispatch`] offers it to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// The endpoint its sticky session pins it to (anywhere when `None`).
    pub target: Option<&'a Arc<EndpointState>>,
    /// Its class.
    pub class: Class,
    /// When it joined the queue.
    pub since: Instant,
    /// Other new-session waiters bound for no endpoint in particular.
    pub other_births: u64,
}

/// A pool's queue of waiting requests.
#[derive(Debug, Default)]
pub struct SurgeQueue {
    /// One FIFO per [`Class`], established first.
    waiters: Mutex<[VecDeque<Waiter>; 2]>,
    /// Entries in the FIFOs (waiters that gave up are counted until purged).
    depth: AtomicUsize,
}

/// A request waiting in the queue; dropping it leaves the queue.
#[derive(Debug)]
pub struct Waiting {
    /// Receives the reserved slot, or [`Displaced`].
    pub slot: oneshot::Receiver<Handoff>,
}

impl SurgeQueue {
    /// New-session waiters bound for no endpoint in particular (births
    /// waiting for a home).
    pub fn births(&self) -> u64 {
        self.lock()[Class::New as usize]
            .iter()
            .filter(|w| w.target.is_none() && !w.tx.is_closed())
            .count() as u64
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether anyone is waiting (new arrivals then queue behind them).
    pub fn has_waiters(&self) -> bool {
        self.depth() > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [VecDeque<Waiter>; 2]> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops waiters that gave up.
    fn purge(&self, waiters: &mut [VecDeque<Waiter>; 2]) {
        for q in waiters.iter_mut() {
            let before = q.len();
            q.retain(|w| !w.tx.is_closed());
            self.depth.fetch_sub(before - q.len(), Ordering::Relaxed);
        }
    }

    /// Joins the queue of `class`, waiting for a slot on `target` (any
    /// endpoint when `None`). When `max_length` are already waiting, an
    /// established request with `priority` displaces the newest new-session
    /// waiter; anyone else is refused.
    pub fn enqueue(
        self: &Arc<Self>,
        max_length: usize,
        class: Class,
        target: Option<Arc<EndpointState>>,
        priority: bool,
    ) -> Option<Waiting> {
        let mut waiters = self.lock();
        if self.depth() >= max_length {
            self.purge(&mut waiters);
        }
        if self.depth() >= max_length {
            let displaced = (priority && class == Class::Established)
                .then(|| waiters[Class::New as usize].pop_back())
                .flatten()?;
            // Its receiver learns at once; the depth stays: one out, one in.
            let _ = displaced.tx.send(Err(Displaced));
        } else {
            self.depth.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = oneshot::channel();
        waiters[class as usize].push_back(Waiter {
            tx,
            target,
            since: Instant::now(),
        });
        Some(Waiting { slot: rx })
    }

    /// Hands slots to waiters, established ones first, each class oldest
    /// first. `reserve(want)` reserves a slot for the waiter: on its target,
    /// or where the caller places it (anywhere, or where a new session
    /// should be born); `None` leaves it waiting. A waiter whose slot is not
    /// free now keeps its place, and those behind it may still be served by
    /// other endpoints.
    pub fn dispatch(&self, mut reserve: impl FnMut(&Want<'_>) -> Option<InFlight>) {
        let mut unused = Vec::new();
        {
            let mut waiters = self.lock();
            self.purge(&mut waiters);
            // Unpinned waiters of each class that found no slot: the ones
            // behind them will not either.
            let mut anywhere_full = [false; 2];
            let mut full_targets: Vec<*const EndpointState> = Vec::new();
            let mut births = waiters[Class::New as usize]
                .iter()
                .filter(|w| w.target.is_none())
                .count() as u64;
            for class in 0..2 {
                let mut i = 0;
                while i < waiters[class].len() {
                    let target = waiters[class][i].target.clone();
                    let blocked = match &target {
                        None => anywhere_full[class],
                        Some(t) => full_targets.contains(&Arc::as_ptr(t)),
                    };
                    if blocked {
                        i += 1;
                        continue;
                    }
                    let birth = class == Class::New as usize && target.is_none();
                    let want = Want {
                        target: target.as_ref(),
                        class: if class == 0 {
                            Class::Established
                        } else {
                            Class::New
                        },
                        since: waiters[class][i].since,
                        other_births: births.saturating_sub(u64::from(birth)),
                    };
                    let Some(slot) = reserve(&want) else {
                        match &target {
                            None => anywhere_full[class] = true,
                            Some(t) => full_targets.push(Arc::as_ptr(t)),
                        }
                        i += 1;
                        continue;
                    };
                    if birth {
                        births -= 1;
                    }
                    let w = waiters[class].remove(i).expect("index in range");
                    self.depth.fetch_sub(1, Ordering::Relaxed);
                    if let Err(Ok(slot)) = w.tx.send(Ok(slot)) {
                        // It gave up meanwhile: the slot is released below.
                        unused.push(slot);
                    }
                }
            }
        }
        // Released outside the lock: dropping a slot may dispatch again.
        drop(unused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoints;
    use crate::metrics::Metrics;

    fn endpoints(n: usize) -> Vec<Arc<EndpointState>> {
        let all = Endpoints::new(Metrics::default());
        (0..n)
            .map(|i| all.get_or_create("p", &format!("127.0.0.1:{}", i + 1), None, true))
            .collect()
    }

    fn any(q: &Arc<SurgeQueue>, max: usize) -> Option<Waiting> {
        q.enqueue(max, Class::New, None, true)
    }

    #[tokio::test]
    async fn fifo_handoff_and_bounded_length() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoints(1).remove(0);
        let mut a = any(&q, 2).unwrap();
        let mut b = any(&q, 2).unwrap();
        assert!(any(&q, 2).is_none(), "full");
        assert_eq!(q.depth(), 2);

        let mut free = 1;
        q.dispatch(|_| {
            (free > 0).then(|| {
                free -= 1;
                e.start_request()
            })
        });
        assert!(
            matches!(a.slot.try_recv(), Ok(Ok(_))),
            "the oldest waiter gets the first slot"
        );
        assert!(b.slot.try_recv().is_err());
        assert_eq!(
            e.in_flight(),
            0,
            "the received guard was dropped by try_recv's temporary"
        );
        drop(a);
        assert_eq!(q.depth(), 1);

        q.dispatch(|_| Some(e.start_request()));
        let slot = b.slot.try_recv().unwrap();
        assert_eq!(e.in_flight(), 1);
        drop(slot);
        drop(b);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn a_slot_refused_by_a_gone_waiter_goes_to_the_next() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoints(1).remove(0);
        let gone = any(&q, 10).unwrap();
        let mut next = any(&q, 10).unwrap();
        drop(gone);
        let mut reserved = 0;
        q.dispatch(|_| {
            reserved += 1;
            (reserved == 1).then(|| e.start_request())
        });
        assert!(matches!(next.slot.try_recv(), Ok(Ok(_))));
        assert_eq!(e.in_flight(), 0);
    }

    #[tokio::test]
    async fn unused_slot_is_released() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoints(1).remove(0);
        let w = any(&q, 1).unwrap();
        drop(w);
        q.dispatch(|_| Some(e.start_request()));
        assert_eq!(
            e.in_flight(),
            0,
            "no waiter: nothing reserved or the slot was released"
        );
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn pinned_waiters_get_their_own_endpoint_and_do_not_block_others() {
        let q = Arc::new(SurgeQueue::default());
        let eps = endpoints(2);
        let (busy, idle) = (&eps[0], &eps[1]);
        let mut pinned = q
            .enqueue(10, Class::Established, Some(busy.clone()), true)
            .unwrap();
        let mut free = any(&q, 10).unwrap();
        // Only `idle` has a slot: the pinned waiter keeps its place, the
        // one behind it is served by `idle`.
        q.dispatch(|w| match w.target {
            Some(t) if Arc::ptr_eq(t, busy) => None,
            Some(t) => Some(t.start_request()),
            None => Some(idle.start_request()),
        });
        let got = free.slot.try_recv().unwrap().unwrap();
        assert!(Arc::ptr_eq(got.endpoint(), idle));
        assert!(pinned.slot.try_recv().is_err(), "still waiting for its pod");
        assert_eq!(q.depth(), 1);
        q.dispatch(|w| w.target.map(|t| t.start_request()));
        let got = pinned.slot.try_recv().unwrap().unwrap();
        assert!(Arc::ptr_eq(got.endpoint(), busy));
    }

    #[tokio::test]
    async fn established_sessions_go_first_and_displace_new_ones_when_full() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoints(1).remove(0);
        let mut login1 = any(&q, 3).unwrap();
        let mut login2 = any(&q, 3).unwrap();
        let mut attempt1 = q.enqueue(3, Class::Established, None, true).unwrap();
        // Full: an established request takes the newest login's place...
        let mut attempt2 = q.enqueue(3, Class::Established, None, true).unwrap();
        assert_eq!(login2.slot.try_recv().unwrap().unwrap_err(), Displaced);
        assert_eq!(q.depth(), 3);
        // ...a new session is refused, and so is anyone without priority.
        assert!(any(&q, 3).is_none());
        assert!(q.enqueue(3, Class::Established, None, false).is_none());
        // Established waiters are served before the older login.
        let mut free = 2;
        q.dispatch(|_| {
            (free > 0).then(|| {
                free -= 1;
                e.start_request()
            })
        });
        assert!(matches!(attempt1.slot.try_recv(), Ok(Ok(_))));
        assert!(matches!(attempt2.slot.try_recv(), Ok(Ok(_))));
        assert!(login1.slot.try_recv().is_err());
        q.dispatch(|_| Some(e.start_request()));
        assert!(matches!(login1.slot.try_recv(), Ok(Ok(_))));
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn without_new_waiters_a_full_queue_refuses_established_ones_too() {
        let q = Arc::new(SurgeQueue::default());
        let _a = q.enqueue(1, Class::Established, None, true).unwrap();
        assert!(q.enqueue(1, Class::Established, None, true).is_none());
    }
}
