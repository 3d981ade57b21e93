//! Arrivals per second from a trace's rates: exactly the rate, or Poisson
//! counts drawn from a seeded generator (the same draws for every policy
//! of a run, so policies are compared on identical traffic).

/// How the requests of a second are drawn from its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// Poisson counts with the trace's rate as the mean (seeded).
    #[default]
    Poisson,
    /// Exactly the trace's rate (a fluid, noiseless load).
    Exact,
}

/// The requests arriving in each second.
pub fn draw(rps: &[f64], how: Arrivals, seed: u64) -> Vec<f64> {
    match how {
        Arrivals::Exact => rps.to_vec(),
        Arrivals::Poisson => {
            let mut rng = fastrand::Rng::with_seed(seed);
            rps.iter().map(|&mean| poisson(&mut rng, mean)).collect()
        }
    }
}

/// One Poisson draw: Knuth's method for small means, the normal
/// approximation (rounded, at least 0) from 30 on.
fn poisson(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    if mean < 30.0 {
        let limit = (-mean).exp();
        let mut k = 0.0;
        let mut p = rng.f64();
        while p > limit {
            k += 1.0;
            p *= rng.f64();
        }
        return k;
    }
    // Box–Muller; 1 - f64() lies in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (mean + mean.sqrt() * z).round().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn poisson_has_the_rate_as_mean_and_variance() {
        for rate in [0.5, 4.0, 200.0] {
            let draws = draw(&vec![rate; 20_000], Arrivals::Poisson, 7);
            let (m, v) = mean_var(&draws);
            assert!(
                (m - rate).abs() < rate * 0.05 + 0.05,
                "rate {rate}: mean {m}"
            );
            assert!(
                (v - rate).abs() < rate * 0.1 + 0.1,
                "rate {rate}: variance {v}"
            );
            assert!(draws.iter().all(|d| d.fract() == 0.0 && *d >= 0.0));
        }
    }

    #[test]
    fn seeded_and_exact() {
        let rps = [1.0, 50.0, 0.0, 3.5];
        assert_eq!(
            draw(&rps, Arrivals::Poisson, 1),
            draw(&rps, Arrivals::Poisson, 1)
        );
        assert_ne!(
            draw(&[100.0; 50], Arrivals::Poisson, 1),
            draw(&[100.0; 50], Arrivals::Poisson, 2)
        );
        assert_eq!(draw(&rps, Arrivals::Exact, 1), rps.to_vec());
    }
}
