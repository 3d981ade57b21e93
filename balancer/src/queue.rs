//! The surge queue: when every endpoint of a pool is at its in-flight limit,
//! requests wait in FIFO order and are handed a reserved slot as soon as one
//! frees, instead of piling onto pods that are already full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::endpoint::InFlight;

/// A pool's queue of waiting requests.
#[derive(Debug, Default)]
pub struct SurgeQueue {
    waiters: Mutex<VecDeque<oneshot::Sender<InFlight>>>,
    depth: AtomicUsize,
}

/// A request waiting in the queue; dropping it leaves the queue.
#[derive(Debug)]
pub struct Waiting {
    /// Receives the reserved slot.
    pub slot: oneshot::Receiver<InFlight>,
    queue: Arc<SurgeQueue>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queue.depth.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SurgeQueue {
    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether anyone is waiting (new arrivals then queue behind them).
    pub fn has_waiters(&self) -> bool {
        self.depth() > 0
    }

    /// Joins the back of the queue, unless `max_length` are already waiting.
    pub fn enqueue(self: &Arc<Self>, max_length: usize) -> Option<Waiting> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if self.depth.load(Ordering::Relaxed) >= max_length {
            return None;
        }
        if waiters.len() > 2 * max_length.max(16) {
            waiters.retain(|w| !w.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        waiters.push_back(tx);
        self.depth.fetch_add(1, Ordering::Relaxed);
        Some(Waiting {
            slot: rx,
            queue: self.clone(),
        })
    }

    /// Hands slots to waiters, oldest first, while `reserve` finds one.
    /// A slot refused by a waiter that gave up goes to the next one.
    pub fn dispatch(&self, mut reserve: impl FnMut() -> Option<InFlight>) {
        let mut leftover = None;
        {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(front) = waiters.front() {
                if front.is_closed() {
                    waiters.pop_front();
                    continue;
                }
                let slot = match leftover.take().or_else(&mut reserve) {
                    Some(s) => s,
                    None => break,
                };
                let tx = waiters.pop_front().expect("front exists");
                if let Err(slot) = tx.send(slot) {
                    leftover = Some(slot);
                }
            }
        }
        // Released outside the lock: dropping a slot may dispatch again.
        drop(leftover);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoints;
    use crate::metrics::Metrics;

    fn endpoint() -> Arc<crate::endpoint::EndpointState> {
        Endpoints::new(Metrics::default()).get_or_create("p", "127.0.0.1:1", None, true)
    }

    #[tokio::test]
    async fn fifo_handoff_and_bounded_length() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoint();
        let mut a = q.enqueue(2).unwrap();
        let mut b = q.enqueue(2).unwrap();
        assert!(q.enqueue(2).is_none(), "full");
        assert_eq!(q.depth(), 2);

        let mut free = 1;
        q.dispatch(|| {
            (free > 0).then(|| {
                free -= 1;
                e.start_request()
            })
        });
        assert!(
            a.slot.try_recv().is_ok(),
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

        q.dispatch(|| Some(e.start_request()));
        let slot = b.slot.try_recv().unwrap();
        assert_eq!(e.in_flight(), 1);
        drop(slot);
        drop(b);
        assert_eq!(q.depth(), 0);
    }

    #[tokio::test]
    async fn a_slot_refused_by_a_gone_waiter_goes_to_the_next() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoint();
        let gone = q.enqueue(10).unwrap();
        let mut next = q.enqueue(10).unwrap();
        drop(gone);
        let mut reserved = 0;
        q.dispatch(|| {
            reserved += 1;
            (reserved == 1).then(|| e.start_request())
        });
        assert!(next.slot.try_recv().is_ok());
        assert_eq!(e.in_flight(), 0);
    }

    #[tokio::test]
    async fn unused_slot_is_released() {
        let q = Arc::new(SurgeQueue::default());
        let e = endpoint();
        let w = q.enqueue(1).unwrap();
        let Waiting { .. } = &w;
        drop(w);
        q.dispatch(|| Some(e.start_request()));
        assert_eq!(
            e.in_flight(),
            0,
            "no waiter: nothing reserved or the slot was released"
        );
    }
}
