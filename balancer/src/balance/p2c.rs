//! Power of two choices: the less loaded of two random candidates.

use super::{Candidate, Picker};

/// Draws two distinct candidates from `entropy` and keeps the less loaded
/// (by the same weighted key as least-connections). O(1) per pick, so it
/// suits large pools; Envoy's `least_request` uses it by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct PowerOfTwoChoices;

impl Picker for PowerOfTwoChoices {
    fn pick(&self, candidates: &[Candidate], entropy: u64) -> Option<usize> {
        let n = candidates.len() as u64;
        match n {
            0 => None,
            1 => Some(0),
            _ => {
                let a = entropy % n;
                let mut b = (entropy / n) % (n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (a as usize, b as usize);
                Some(if candidates[b].cmp_load(&candidates[a]).is_lt() {
                    b
                } else {
                    a
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: f64, in_flight: u64) -> Candidate {
        Candidate { weight, in_flight }
    }

    #[test]
    fn small_pools() {
        assert_eq!(PowerOfTwoChoices.pick(&[], 3), None);
        assert_eq!(PowerOfTwoChoices.pick(&[c(1.0, 9)], 3), Some(0));
        // With two candidates both are always compared: the idle one wins.
        for e in 0..20 {
            assert_eq!(PowerOfTwoChoices.pick(&[c(1.0, 9), c(1.0, 0)], e), Some(1));
        }
    }

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        let mut cs = vec![c(1.0, 0); 8];
        cs[5] = c(1.0, 100);
        for e in 0..10_000u64 {
            let x = e.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_ne!(PowerOfTwoChoices.pick(&cs, x), Some(5));
        }
    }

    #[test]
    fn pairs_are_distinct_and_cover_the_pool() {
        let cs = vec![c(1.0, 0); 5];
        let mut seen = [0; 5];
        for e in 0..1000u64 {
            seen[PowerOfTwoChoices.pick(&cs, e).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&s| s > 100), "{seen:?}");
    }
}
