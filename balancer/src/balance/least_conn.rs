//! Weighted least-connections over the whole candidate list.

use super::{Candidate, Picker};

/// Picks the candidate with the least `in_flight / weight`.
///
/// Equal keys (most often: several idle endpoints) are broken by a weighted
/// random draw from `entropy`, so ties never favour the first endpoint and a
/// quiet pool still splits requests by weight, the way Envoy's weighted
/// scheduler does. Under load the key itself spreads requests in proportion to
/// the weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastConnections;

impl Picker for LeastConnections {
    fn pick(&self, candidates: &[Candidate], entropy: u64) -> Option<usize> {
        let first = candidates.first()?;
        let mut best = first;
        let mut tie_weight = 0.0;
        for c in candidates {
            match c.cmp_load(best) {
                std::cmp::Ordering::Less => {
                    best = c;
                    tie_weight = c.weight;
                }
                std::cmp::Ordering::Equal => tie_weight += c.weight,
                std::cmp::Ordering::Greater => {}
            }
        }
        // `entropy` maps to a point in [0, tie_weight); walk the tied candidates to it.
        let mut point = (entropy >> 11) as f64 / (1u64 << 53) as f64 * tie_weight;
        let mut last = 0;
        for (i, c) in candidates.iter().enumerate() {
            if c.cmp_load(best).is_eq() {
                if point < c.weight {
                    return Some(i);
                }
                point -= c.weight;
                last = i;
            }
        }
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: f64, in_flight: u64) -> Candidate {
        Candidate { weight, in_flight }
    }

    #[test]
    fn empty_has_no_pick() {
        assert_eq!(LeastConnections.pick(&[], 7), None);
    }

    #[test]
    fn picks_least_loaded_whatever_the_start() {
        let cs = [c(1.0, 5), c(1.0, 2), c(1.0, 9)];
        for e in 0..10 {
            assert_eq!(LeastConnections.pick(&cs, spread(e)), Some(1));
        }
    }

    #[test]
    fn weight_scales_the_key() {
        // 4/3 = 1.33 beats 2/1.
        let cs = [c(1.0, 2), c(3.0, 4)];
        for e in 0..10 {
            assert_eq!(LeastConnections.pick(&cs, spread(e)), Some(1));
        }
    }

    /// Spreads a counter over the whole u64 range, as a random source would.
    fn spread(e: u64) -> u64 {
        e.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn ties_are_shared_evenly() {
        let cs = [c(1.0, 0); 4];
        let mut counts = [0; 4];
        for e in 0..4000 {
            counts[LeastConnections.pick(&cs, spread(e)).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&n| (900..1100).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn ties_are_broken_by_weight() {
        // All idle: the draw follows the weights 1:3.
        let cs = [c(1.0, 0), c(3.0, 0)];
        let mut counts = [0; 2];
        for e in 0..4000 {
            counts[LeastConnections.pick(&cs, spread(e)).unwrap()] += 1;
        }
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn entropy_extremes_stay_in_range() {
        let cs = [c(1.0, 0), c(2.0, 5), c(1.0, 0)];
        assert_eq!(LeastConnections.pick(&cs, 0), Some(0));
        assert_eq!(LeastConnections.pick(&cs, u64::MAX), Some(2));
    }

    #[test]
    fn weighted_shares_follow_weights_under_simulated_load() {
        // Each pick adds one request; every 3 picks the oldest completes.
        // Over time the in-flight split follows the weights 1:2:3.
        let weights = [1.0, 2.0, 3.0];
        let mut in_flight = [0u64; 3];
        let mut served = [0u64; 3];
        let mut queue = std::collections::VecDeque::new();
        for e in 0..6000u64 {
            let cs: Vec<_> = weights
                .iter()
                .zip(in_flight)
                .map(|(&w, f)| c(w, f))
                .collect();
            let i = LeastConnections.pick(&cs, spread(e)).unwrap();
            in_flight[i] += 1;
            served[i] += 1;
            queue.push_back(i);
            if queue.len() > 12 {
                let done = queue.pop_front().unwrap();
                in_flight[done] -= 1;
            }
        }
        let total: u64 = served.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let share = served[i] as f64 / total as f64;
            assert!((share - w / 6.0).abs() < 0.05, "endpoint {i} share {share}");
        }
    }
}
