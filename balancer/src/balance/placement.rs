//! Where a new sticky session is born, and when an established one may move.
//!
//! A pod's live sessions predict its load for as long as they last, so a
//! request that will create a session goes to the pod with the fewest
//! sessions, in-flight requests breaking ties, by configured weight: slow
//! start shapes request load, not where sessions are born, and a warming pod
//! is the best home for one.
//!
//! A session may wait for a slot on a pod with about the fewest sessions
//! rather than take a free one on a pod that holds more (within
//! `maxWait`).
//!
//! While pods are starting, a ready pod takes a new session only below its
//! share of the sessions over ready and starting pods; when none is, the
//! session waits for the capacity that is coming (Knative's activator holds
//! every request this way; here only session births wait, bounded by
//! `sessionPlacement.maxWait`). A login surge (at least as many new
//! sessions waiting as there are ready pods) waits the same way before the
//! autoscaler has listed any pod: sessions born on the old pods in the
//! first second of a class would stay there for the whole class.
//!
//! With sessions kept in a shared store, a session may leave a pod whose
//! load exceeds `balanceFactor` times the pool's average: the bounded-load
//! rule of HAProxy's and Envoy's `hash-balance-factor`.

use super::{Candidate, LeastConnections, Picker};

/// A home within this fraction of the fewest sessions per weight may take a
/// new session while it may still wait.
const NEAR_FEWEST: f64 = 0.1;

/// One session outweighs this many requests in flight when homes are compared.
const LOAD_SCALE: u64 = 1 << 20;

/// A ready endpoint as session placement sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Home {
    /// Configured weight (slow start left out); > 0.
    pub weight: f64,
    /// Live sessions plus new sessions on their way to it.
    pub sessions: u64,
    /// Requests in flight to it.
    pub in_flight: u64,
    /// Below its in-flight limit: it may take the request now. A full home
    /// still counts towards every home's share.
    pub open: bool,
    /// It turned ready after the session began waiting: capacity that came.
    pub fresh: bool,
}

/// What placement decided for a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Born on this home.
    At(usize),
    /// Every ready pod holds its share and pods are starting: wait for them.
    Hold,
}

/// What a new session may wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// It has not waited its longest yet.
    pub may_hold: bool,
    /// The pool's login surge began less than the longest wait ago: the
    /// surge may wait for a scale-out (once per surge, so a steady stream of
    /// logins never waits for a scale-out that is not coming).
    pub surge_window: bool,
}

/// Places a new session among `homes`, with `starting` pods on their way
/// and `waiting` other new sessions already waiting for them. `None` when
/// there is no home and nothing to wait for, or every home is full and the
/// session may not wait.
pub fn place(
    homes: &[Home],
    starting: usize,
    waiting: u64,
    patience: Patience,
    entropy: u64,
) -> Option<Placement> {
    let may_hold = patience.may_hold;
    let surge =
        patience.surge_window && is_surge(homes.len(), waiting) && !homes.iter().any(|h| h.fresh);
    let holding = may_hold && (starting > 0 || surge);
    if holding && starting == 0 {
        // A login surge with no pod on its way yet: wait for the scale-out.
        return Some(Placement::Hold);
    }
    let eligible: Vec<usize> = if holding {
        // Sessions there will be: live, on their way, and waiting.
        let sessions: u64 = homes.iter().map(|h| h.sessions).sum::<u64>() + waiting;
        let total_weight: f64 = homes.iter().map(|h| h.weight).sum();
        // A starting pod counts with the ready pods' mean weight.
        let mean = if homes.is_empty() {
            1.0
        } else {
            total_weight / homes.len() as f64
        };
        let all_weight = total_weight + starting as f64 * mean;
        homes
            .iter()
            .enumerate()
            .filter(|(_, h)| h.open)
            .filter(|(_, h)| {
                // Its share of every session once this one is born, not
                // rounded up: pods still starting when the first of them
                // turn ready keep room for their share.
                let share = (sessions + 1) as f64 * h.weight / all_weight;
                (h.sessions + 1) as f64 <= share + 1e-9
            })
            .map(|(i, _)| i)
            .collect()
    } else if may_hold {
        // Only a home within a little of the fewest sessions (full ones
        // included) takes it: a free slot on a pod that already holds more
        // than the others is no reason to pin a session there for good.
        let per_weight = |h: &Home| h.sessions as f64 / h.weight;
        let fewest = homes.iter().map(per_weight).fold(f64::INFINITY, f64::min);
        (0..homes.len())
            .filter(|&i| {
                let h = &homes[i];
                // Within a tenth of the fewest (per weight): a pod one
                // session above an empty one waits for the empty one.
                h.open && per_weight(h) <= fewest * (1.0 + NEAR_FEWEST) + 1e-12
            })
            .collect()
    } else {
        (0..homes.len()).filter(|&i| homes[i].open).collect()
    };
    if eligible.is_empty() {
        return (holding || (may_hold && !homes.is_empty())).then_some(Placement::Hold);
    }
    // A pod that turned ready while the session waited is what it waited
    // for: it goes there.
    let mut eligible = eligible;
    if eligible.iter().any(|&i| homes[i].fresh) {
        eligible.retain(|&i| homes[i].fresh);
    }
    // Sessions first (the load to come), in-flight requests break ties (a
    // birth on its way is both a session and a request: counting the two
    // together would count it twice).
    let candidates: Vec<Candidate> = eligible
        .iter()
        .map(|&i| Candidate {
            weight: homes[i].weight,
            in_flight: homes[i]
                .sessions
                .saturating_mul(LOAD_SCALE)
                .saturating_add(homes[i].in_flight.min(LOAD_SCALE - 1)),
        })
        .collect();
    LeastConnections
        .pick(&candidates, entropy)
        .map(|c| Placement::At(eligible[c]))
}

/// Whether `waiting` new sessions make a login surge over `ready` pods: at
/// least one waiting per ready pod.
pub fn is_surge(ready: usize, waiting: u64) -> bool {
    ready > 0 && waiting >= ready as u64
}

/// Whether a session pinned to an endpoint with `in_flight` requests should
/// move, in a pool whose `available` endpoints have `total_in_flight`: its
/// load, counting this request, would exceed `factor` times the average
/// (rounded up, as HAProxy does), so some other endpoint is below it.
pub fn overloaded(in_flight: u64, total_in_flight: u64, available: usize, factor: f64) -> bool {
    if available < 2 {
        return false;
    }
    let limit = (factor * (total_in_flight + 1) as f64 / available as f64).ceil();
    (in_flight + 1) as f64 > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(sessions: u64, in_flight: u64) -> Home {
        Home {
            weight: 1.0,
            sessions,
            in_flight,
            open: true,
            fresh: false,
        }
    }

    /// Patience with the surge window open.
    fn p(may_hold: bool) -> Patience {
        Patience {
            may_hold,
            surge_window: true,
        }
    }

    fn spread(e: u64) -> u64 {
        e.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn nothing_to_place_on_and_nothing_coming() {
        assert_eq!(place(&[], 0, 0, p(true), 1), None);
        assert_eq!(
            place(&[], 0, 5, p(true), 1),
            None,
            "no pod: no surge to wait out"
        );
        assert_eq!(place(&[], 3, 0, p(false), 1), None);
        assert_eq!(place(&[], 3, 0, p(true), 1), Some(Placement::Hold));
    }

    #[test]
    fn fewest_sessions_wins_when_nothing_is_starting() {
        // In-flight alone would pick 0; its 9 sessions say it will be busy.
        let homes = [h(9, 0), h(2, 1), h(5, 0)];
        for e in 0..20 {
            assert_eq!(
                place(&homes, 0, 0, p(true), spread(e)),
                Some(Placement::At(1))
            );
        }
    }

    #[test]
    fn sessions_first_then_load() {
        // Fewer sessions wins even when busier now: the sessions are the
        // load to come, and a new pod's first births are all in flight.
        let homes = [h(3, 4), h(4, 0)];
        assert_eq!(place(&homes, 0, 0, p(true), 7), Some(Placement::At(0)));
        // Equal sessions: the less busy one.
        let homes = [h(4, 3), h(4, 1)];
        for e in 0..20 {
            assert_eq!(
                place(&homes, 0, 0, p(true), spread(e)),
                Some(Placement::At(1))
            );
        }
    }

    #[test]
    fn weights_scale_the_home() {
        // 6 / 3 = 2 beats 3 / 1.
        let homes = [
            Home {
                weight: 1.0,
                ..h(3, 0)
            },
            Home {
                weight: 3.0,
                ..h(6, 0)
            },
        ];
        assert_eq!(place(&homes, 0, 0, p(true), 7), Some(Placement::At(1)));
    }

    #[test]
    fn births_wait_for_starting_pods_once_ready_ones_hold_their_share() {
        // With 10 others already waiting, the share is (8 + 10 + 1) / 8 =
        // 2.4: still below the ready pods' 4.
        assert_eq!(
            place(&[h(4, 0), h(4, 0)], 6, 10, p(true), 7),
            Some(Placement::Hold)
        );
        // With 40 waiting it is 6.1: a ready pod takes this one.
        assert!(matches!(
            place(&[h(4, 0), h(4, 0)], 6, 40, p(true), 7),
            Some(Placement::At(_))
        ));
        // 2 ready pods with 4 sessions each, 6 starting: the share of 9
        // sessions over 8 pods is 1.1 each, so the 9th waits.
        let homes = [h(4, 1), h(4, 0)];
        assert_eq!(place(&homes, 6, 0, p(true), 7), Some(Placement::Hold));
        // Past its longest wait it is born on a ready pod after all.
        assert!(matches!(
            place(&homes, 6, 0, p(false), 7),
            Some(Placement::At(_))
        ));
        // Nothing starting: no reason to wait.
        assert!(matches!(
            place(&homes, 0, 0, p(true), 7),
            Some(Placement::At(_))
        ));
    }

    #[test]
    fn a_ready_pod_below_its_share_still_takes_births() {
        // 8 sessions (+1) over 4 pods: a share of 2.25.
        let homes = [h(7, 0), h(1, 0)];
        assert_eq!(place(&homes, 2, 0, p(true), 7), Some(Placement::At(1)));
        // 9 (+1) over 4: 2.5, and a third session would be above it.
        let homes = [h(7, 0), h(2, 0)];
        assert_eq!(place(&homes, 2, 0, p(true), 7), Some(Placement::Hold));
    }

    #[test]
    fn a_surge_fills_every_pod_to_its_share() {
        // 2 ready pods with 4 sessions, 6 starting, 42 births arrive: the
        // ready pods take births up to their share, the rest wait; once the
        // starting pods are ready, births fill them first.
        let mut ready = vec![h(4, 0), h(4, 0)];
        let mut starting = 6;
        let mut held = 0;
        for e in 0..42u64 {
            match place(&ready, starting, held, p(true), spread(e)).unwrap() {
                Placement::At(i) => ready[i].sessions += 1,
                Placement::Hold => held += 1,
            }
        }
        // Counting the waiting births, the ready pods take their share of
        // 50 over 8 pods (6.25) rather than stay at 4.
        let ready_sessions: Vec<u64> = ready.iter().map(|h| h.sessions).collect();
        assert!(ready_sessions.iter().all(|&n| n == 6), "{ready_sessions:?}");
        assert_eq!(ready.iter().map(|h| h.sessions).sum::<u64>() + held, 50);
        // The starting pods turn ready (after the births began waiting);
        // the held births are placed.
        let fresh = Home {
            fresh: true,
            ..h(0, 0)
        };
        ready.extend(std::iter::repeat_n(fresh, 6));
        starting = 0;
        for e in 0..held {
            match place(&ready, starting, held - e - 1, p(true), spread(e)).unwrap() {
                Placement::At(i) => ready[i].sessions += 1,
                Placement::Hold => unreachable!("nothing is starting"),
            }
        }
        let counts: Vec<u64> = ready.iter().map(|h| h.sessions).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "50 sessions over 8 pods: {counts:?}");
    }

    #[test]
    fn a_login_surge_waits_for_the_scale_out() {
        let homes = [h(4, 2), h(4, 2)];
        // One other new session waiting: an ordinary burst, placed now.
        assert!(matches!(
            place(&homes, 0, 1, p(true), 7),
            Some(Placement::At(_))
        ));
        // As many waiting as there are ready pods: a surge; wait for pods.
        assert_eq!(place(&homes, 0, 2, p(true), 7), Some(Placement::Hold));
        // Until the longest wait is over.
        assert!(matches!(
            place(&homes, 0, 2, p(false), 7),
            Some(Placement::At(_))
        ));
        // Or once the surge's window is over.
        let late = Patience {
            may_hold: true,
            surge_window: false,
        };
        assert!(matches!(
            place(&homes, 0, 2, late, 7),
            Some(Placement::At(_))
        ));
        // A pod that turned ready while it waited wins a tie.
        let quiet = [
            h(0, 0),
            h(0, 0),
            Home {
                fresh: true,
                ..h(0, 0)
            },
        ];
        for e in 0..20 {
            assert_eq!(
                place(&quiet, 0, 0, p(true), spread(e)),
                Some(Placement::At(2))
            );
        }
        // Or until a pod turns ready: it takes them (fewest sessions).
        let fresh = Home {
            fresh: true,
            ..h(0, 0)
        };
        assert_eq!(
            place(&[homes[0], homes[1], fresh], 0, 5, p(true), 7),
            Some(Placement::At(2))
        );
    }

    #[test]
    fn a_full_home_counts_but_takes_nothing() {
        let full = Home {
            open: false,
            ..h(0, 2)
        };
        // The open pod holds 5 more sessions: wait for the fuller one's slot
        // while it may wait, then take the open one.
        assert_eq!(
            place(&[full, h(5, 0)], 0, 0, p(true), 7),
            Some(Placement::Hold)
        );
        assert_eq!(
            place(&[full, h(5, 0)], 0, 0, p(false), 7),
            Some(Placement::At(1))
        );
        // One session above an empty pod: wait for the empty one.
        assert_eq!(
            place(&[full, h(1, 0)], 0, 0, p(true), 7),
            Some(Placement::Hold)
        );
        // Within a tenth of the fewest.
        let full = Home {
            open: false,
            ..h(100, 2)
        };
        assert_eq!(
            place(&[full, h(110, 0)], 0, 0, p(true), 7),
            Some(Placement::At(1))
        );
        assert_eq!(
            place(&[full, h(112, 0)], 0, 0, p(true), 7),
            Some(Placement::Hold)
        );
        // The same with the default weight of 100.
        let w = |home: Home| Home {
            weight: 100.0,
            ..home
        };
        assert_eq!(
            place(&[w(full), w(h(110, 0))], 0, 0, p(true), 7),
            Some(Placement::At(1))
        );
        assert_eq!(
            place(&[w(full), w(h(112, 0))], 0, 0, p(true), 7),
            Some(Placement::Hold)
        );
        assert_eq!(place(&[full], 0, 0, p(false), 7), None);
        assert_eq!(place(&[full], 0, 0, p(true), 7), Some(Placement::Hold));
        assert_eq!(place(&[full], 2, 0, p(true), 7), Some(Placement::Hold));
    }

    #[test]
    fn bounded_load() {
        // One endpoint alone never moves its sessions.
        assert!(!overloaded(10, 10, 1, 1.25));
        // Quiet pool: never.
        assert!(!overloaded(0, 0, 4, 1.25));
        // 3 of 3 on one of 2: limit ceil(1.5 * 4 / 2) = 3; 4 > 3.
        assert!(overloaded(3, 3, 2, 1.5));
        // 2 of 3: 3 is not above 3.
        assert!(!overloaded(2, 3, 2, 1.5));
        // A larger factor tolerates more.
        assert!(!overloaded(3, 3, 2, 2.0));
    }
}
