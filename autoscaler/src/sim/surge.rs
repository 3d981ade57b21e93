//! Surges in a trace, for the report's "first scale after surge".
//!
//! A surge starts at second `s` when the trace's rate at `s` is at least
//! [`FACTOR`] times, and at least [`MIN_RISE`] req/s above, the average of
//! the [`BASELINE`] seconds that ended [`RISE`] seconds before `s` (so a
//! rise spread over up to 10 s counts), the rate stays there on average
//! for the next [`HOLD`] seconds (not a one-second blip), and no second in
//! the [`BASELINE`] seconds before `s` met the condition (one surge is
//! counted once, however long it climbs).

/// How much the rate must rise.
pub const FACTOR: f64 = 2.0;
/// Seconds the rise may take.
pub const RISE: usize = 10;
/// Seconds averaged for the level before the rise.
pub const BASELINE: usize = 60;
/// The smallest rise that counts, req/s.
pub const MIN_RISE: f64 = 5.0;
/// Seconds the new level must hold on average.
pub const HOLD: usize = 5;

/// The seconds at which surges start.
pub fn onsets(rps: &[f64]) -> Vec<u64> {
    let window = RISE + BASELINE;
    if rps.len() <= window {
        return Vec::new();
    }
    // Prefix sums make every baseline O(1).
    let mut sums = Vec::with_capacity(rps.len() + 1);
    sums.push(0.0);
    for r in rps {
        sums.push(sums.last().copied().unwrap_or(0.0) + r);
    }
    let mean = |a: usize, b: usize| (sums[b] - sums[a]) / (b - a) as f64;
    let rising = |s: usize| {
        let base = mean(s - window, s - RISE);
        let high = |r: f64| r >= FACTOR * base && r - base >= MIN_RISE;
        high(rps[s]) && high(mean(s, (s + HOLD).min(rps.len())))
    };
    let mut out = Vec::new();
    let mut last_rising: Option<usize> = None;
    for s in window..rps.len() {
        if rising(s) {
            if last_rising.is_none_or(|l| s - l > BASELINE) {
                out.push(s as u64);
            }
            last_rising = Some(s);
        }
    }
    out
}

/// How long after a surge's start a scale-up still counts as its reaction.
pub const REACTION_WINDOW: u64 = 600;

/// Seconds from each surge's start to the first scale-up at or after it,
/// if one came within [`REACTION_WINDOW`] and before the next surge
/// (`scale_ups` are decision times in seconds since the start, in order).
pub fn reactions(onsets: &[u64], scale_ups: &[u64]) -> Vec<Option<u64>> {
    onsets
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let next = onsets.get(i + 1).copied().unwrap_or(u64::MAX);
            let until = next.min(s + REACTION_WINDOW);
            scale_ups
                .iter()
                .find(|&&u| u >= s)
                .filter(|&&u| u < until)
                .map(|u| u - s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cliff_is_one_surge_and_a_ramp_is_none() {
        let mut rps = vec![100.0; 600];
        rps[300..500].fill(1000.0);
        assert_eq!(onsets(&rps), vec![300]);
        // Rising 2× over 10 s counts, at the second it reaches 2×.
        let mut rps = vec![100.0; 400];
        for (i, r) in rps[200..].iter_mut().enumerate() {
            *r = 100.0 + 20.0 * (i as f64 + 1.0).min(10.0);
        }
        assert_eq!(onsets(&rps), vec![204]);
        // Tripling over ten minutes is a ramp, not a surge.
        let ramp: Vec<f64> = (0..1200).map(|i| 100.0 + f64::from(i) * 0.25).collect();
        assert_eq!(onsets(&ramp), Vec::<u64>::new());
    }

    #[test]
    fn blips_and_tiny_rates_are_not_surges_and_two_spikes_are_two() {
        let mut rps = vec![100.0; 600];
        rps[300] = 500.0;
        assert!(onsets(&rps).is_empty(), "a one-second blip");
        let mut rps = vec![0.5; 600];
        rps[300..400].fill(3.0);
        assert!(
            onsets(&rps).is_empty(),
            "+2.5 req/s is below the minimum rise"
        );
        let mut rps = vec![100.0; 1000];
        rps[200..260].fill(600.0);
        rps[600..700].fill(800.0);
        assert_eq!(onsets(&rps), vec![200, 600]);
    }

    #[test]
    fn reaction_is_the_first_scale_up_before_the_next_surge() {
        assert_eq!(
            reactions(&[100, 500], &[50, 101, 130, 900]),
            vec![Some(1), Some(400)]
        );
        assert_eq!(reactions(&[100, 500], &[600]), vec![None, Some(100)]);
        assert_eq!(reactions(&[100], &[]), vec![None]);
        // A scale-up long after (say, for tomorrow's peak) is no reaction.
        assert_eq!(reactions(&[100], &[700, 800]), vec![None]);
        assert_eq!(reactions(&[100], &[699]), vec![Some(599)]);
    }
}
