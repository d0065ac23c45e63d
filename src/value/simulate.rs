//! Customers drawn from the BG/NBD and Gamma-Gamma processes with known
//! parameters: for parameter-recovery tests and benchmarks.
//!
//! Each customer gets λ ~ Gamma(r, α) and p ~ Beta(a, b); purchases
//! follow a Poisson process with rate λ from the first purchase at time 0,
//! and after each repeat purchase the customer leaves with probability p.
//! Each purchase's value is Gamma(p_gg, ν) with ν ~ Gamma(q, v).

use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::bgnbd::BgNbdParams;
use super::gamma_gamma::GammaGammaParams;
use super::summary::Rft;

/// One simulated customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Simulated {
    pub rft: Rft,
    /// Mean value of the repeat purchases (`NaN` without one).
    pub mean_repeat_spend: f64,
    /// Purchases in `(T, T + holdout]`.
    pub holdout_purchases: u32,
}

/// How customers are observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// `T` is uniform on `[t_min, t_max]` (first purchases spread over a
    /// period, as in a real log).
    pub t_min: f64,
    pub t_max: f64,
    pub holdout: f64,
    /// Rounds every time down to a multiple of this (a day in weeks is
    /// 1/7), as dates in a log are; `None` keeps continuous times.
    pub grid: Option<f64>,
}

/// `n` customers from the given parameters, the same for the same seed.
///
/// # Panics
/// On parameters that are not positive (they define the distributions).
pub fn customers(
    n: usize,
    bg: &BgNbdParams,
    gg: &GammaGammaParams,
    obs: &Observation,
    seed: u64,
) -> Vec<Simulated> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let rate = Gamma::new(bg.r, 1.0 / bg.alpha).expect("r and alpha are positive");
    let dropout = Beta::new(bg.a, bg.b).expect("a and b are positive");
    let nu = Gamma::new(gg.q, 1.0 / gg.v).expect("q and v are positive");
    let snap = |t: f64| obs.grid.map_or(t, |g| (t / g).floor() * g);
    (0..n)
        .map(|_| {
            let big_t = snap(obs.t_min + (obs.t_max - obs.t_min) * rng.random::<f64>());
            let lambda: f64 = rate.sample(&mut rng).max(1e-300);
            let p: f64 = dropout.sample(&mut rng);
            let wait = Exp::new(lambda).expect("a positive rate");
            let spend_rate: f64 = nu.sample(&mut rng).max(1e-300);
            let value = Gamma::new(gg.p, 1.0 / spend_rate).expect("p is positive");
            let (mut t, mut x, mut t_x, mut holdout, mut total) = (0.0f64, 0u32, 0.0, 0u32, 0.0);
            let mut last_day = 0.0;
            loop {
                t += wait.sample(&mut rng);
                if t > big_t + obs.holdout {
                    break;
                }
                let day = snap(t);
                // Two purchases on one day of the grid are one purchase.
                if obs.grid.is_some() && day == last_day {
                    continue;
                }
                last_day = day;
                if day <= big_t {
                    x += 1;
                    t_x = day;
                    total += value.sample(&mut rng);
                } else {
                    holdout += 1;
                }
                if rng.random::<f64>() < p {
                    break;
                }
            }
            Simulated {
                rft: Rft { x, t_x, t: big_t },
                mean_repeat_spend: if x > 0 { total / x as f64 } else { f64::NAN },
                holdout_purchases: holdout,
            }
        })
        .collect()
}
