//! Lifetime value over a horizon, value tiers and churn risk.
//!
//! CLV is the discrete discounted form: over the horizon's periods (one
//! period per time unit), the purchases expected in each period times the
//! expected spend per purchase, discounted per period:
//!
//! ```text
//! CLV = Σ_{t=1..H} (E[Y(t)] − E[Y(t−1)]) · spend / (1 + rate)^t
//! ```
//!
//! `E[Y(t)] = P(alive) · E[Y(t) | alive]`, and `E[Y(t) | alive]` depends on
//! `(x, T)` only, so it is computed once per distinct pair: a log of
//! daily dates has far fewer pairs than customers.

use std::collections::HashMap;

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::bgnbd::BgNbd;
use super::gamma_gamma::GammaGamma;
use super::summary::Rft;
use super::ValueError;

/// A customer's rank by CLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ValueTier {
    #[serde(rename = "Top 1 %")]
    Top1,
    #[serde(rename = "Top 10 %")]
    Top10,
    #[serde(rename = "Top 50 %")]
    Top50,
    Rest,
}

impl ValueTier {
    pub fn name(self) -> &'static str {
        match self {
            Self::Top1 => "Top 1 %",
            Self::Top10 => "Top 10 %",
            Self::Top50 => "Top 50 %",
            Self::Rest => "Rest",
        }
    }
}

/// How likely a customer is to have left, from `P(alive)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChurnRisk {
    High,
    Medium,
    Low,
}

impl ChurnRisk {
    pub fn name(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        }
    }
}

/// `P(alive)` below `high` is high risk, below `medium` medium, else low.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChurnThresholds {
    pub high: f64,
    pub medium: f64,
}

impl Default for ChurnThresholds {
    fn default() -> Self {
        Self {
            high: 0.5,
            medium: 0.8,
        }
    }
}

impl ChurnThresholds {
    /// Checks `0 < high ≤ medium < 1`.
    pub fn check(&self) -> Result<(), ValueError> {
        if !(self.high > 0.0 && self.high <= self.medium && self.medium < 1.0) {
            return Err(ValueError::invalid(
                "churn_thresholds",
                format!(
                "churn thresholds must satisfy 0 < high <= medium < 1, got high = {}, medium = {}",
                self.high, self.medium
            ),
            ));
        }
        Ok(())
    }

    pub fn risk(&self, p_alive: f64) -> ChurnRisk {
        if p_alive < self.high {
            ChurnRisk::High
        } else if p_alive < self.medium {
            ChurnRisk::Medium
        } else {
            ChurnRisk::Low
        }
    }
}

/// What to score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvOptions {
    /// Periods (time units) ahead.
    pub horizon: u32,
    /// Discount rate per period.
    pub discount_rate: f64,
    pub churn: ChurnThresholds,
}

impl ClvOptions {
    pub fn check(&self) -> Result<(), ValueError> {
        if self.horizon == 0 {
            return Err(ValueError::invalid(
                "horizon",
                "the horizon must be at least 1 period (at most ten years), got 0".into(),
            ));
        }
        // The job's own bound is ten years in its time unit; this one keeps
        // a library caller's work finite.
        if self.horizon > 100_000 {
            return Err(ValueError::invalid(
                "horizon",
                format!(
                    "the horizon must be at most 100000 periods, got {}",
                    self.horizon
                ),
            ));
        }
        if !(self.discount_rate.is_finite()
            && self.discount_rate >= 0.0
            && self.discount_rate < 1.0)
        {
            return Err(ValueError::invalid(
                "discount_rate",
                format!(
                    "the discount rate per period must be in [0, 1), got {}",
                    self.discount_rate
                ),
            ));
        }
        self.churn.check()
    }
}

/// Per customer, in input order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub p_alive: Vec<f64>,
    /// Purchases expected over the horizon.
    pub expected_purchases: Vec<f64>,
    pub expected_spend: Vec<f64>,
    pub clv: Vec<f64>,
    pub value_tier: Vec<ValueTier>,
    pub churn_risk: Vec<ChurnRisk>,
}

/// Per distinct `(x, T)`: expected purchases over the horizon if alive, and
/// the discounted sum of per-period increments.
fn horizon_terms(
    bg: &BgNbd,
    x: u32,
    big_t: f64,
    options: &ClvOptions,
) -> Result<(f64, f64), ValueError> {
    let mut previous = 0.0;
    let mut discounted = 0.0;
    let mut factor = 1.0;
    for t in 1..=options.horizon {
        let e = bg.expected_if_alive(x, big_t, t as f64)?;
        factor /= 1.0 + options.discount_rate;
        discounted += (e - previous) * factor;
        previous = e;
    }
    Ok((previous, discounted))
}

/// Scores every customer: `rft[i]` with mean repeat spend `spend[i]`.
pub fn score(
    bg: &BgNbd,
    gg: &GammaGamma,
    rft: &[Rft],
    spend: &[f64],
    options: &ClvOptions,
) -> Result<Scores, ValueError> {
    score_until(bg, gg, rft, spend, options, None)
}

/// [`score`], stopping with [`ValueError::Cancelled`] soon after `cancel`
/// is set (checked before every distinct `(x, T)`: the work is that count
/// times the horizon's periods).
pub fn score_until(
    bg: &BgNbd,
    gg: &GammaGamma,
    rft: &[Rft],
    spend: &[f64],
    options: &ClvOptions,
    cancel: Option<&AtomicBool>,
) -> Result<Scores, ValueError> {
    options.check()?;
    let mut keys: Vec<(u32, u64)> = rft.iter().map(|r| (r.x, r.t.to_bits())).collect();
    keys.sort_unstable();
    keys.dedup();
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let terms: Vec<(f64, f64)> = keys
        .par_iter()
        .map(|&(x, t)| {
            if cancelled() {
                return Err(ValueError::Cancelled);
            }
            horizon_terms(bg, x, f64::from_bits(t), options)
        })
        .collect::<Result<_, _>>()?;
    let index: HashMap<(u32, u64), usize> = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let mut s = Scores::default();
    for (i, (r, &m)) in rft.iter().zip(spend).enumerate() {
        let (horizon, discounted) = terms[index[&(r.x, r.t.to_bits())]];
        let alive = bg.p_alive(r);
        let value = gg.expected_spend(r.x, m);
        if ![alive, horizon, discounted, value]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(ValueError::BadCustomer {
                index: i,
                what: format!(
                    "the models give no finite score (P(alive) {alive}, expected purchases {horizon}, spend {value}) for x = {}, t_x = {}, T = {}",
                    r.x, r.t_x, r.t
                ),
            });
        }
        s.p_alive.push(alive);
        s.expected_purchases.push(alive * horizon);
        s.expected_spend.push(value);
        s.clv.push(alive * discounted * value);
        s.churn_risk.push(options.churn.risk(alive));
    }
    s.value_tier = tiers(&s.clv);
    Ok(s)
}

/// Tiers by rank: the top 1 % (at least one customer), 10 % and 50 % by
/// CLV, ties broken by input order.
pub fn tiers(clv: &[f64]) -> Vec<ValueTier> {
    let n = clv.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| clv[b].total_cmp(&clv[a]).then(a.cmp(&b)));
    let cut = |share: f64| ((n as f64 * share).ceil() as usize).max(1);
    let (c1, c10, c50) = (cut(0.01), cut(0.10), cut(0.50));
    let mut out = vec![ValueTier::Rest; n];
    for (rank, &i) in order.iter().enumerate() {
        out[i] = if rank < c1 {
            ValueTier::Top1
        } else if rank < c10 {
            ValueTier::Top10
        } else if rank < c50 {
            ValueTier::Top50
        } else {
            ValueTier::Rest
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_rank_and_shares() {
        let clv: Vec<f64> = (0..200).map(|i| i as f64).collect();
        let t = tiers(&clv);
        let count = |tier| t.iter().filter(|&&v| v == tier).count();
        assert_eq!(count(ValueTier::Top1), 2);
        assert_eq!(count(ValueTier::Top10), 18);
        assert_eq!(count(ValueTier::Top50), 80);
        assert_eq!(count(ValueTier::Rest), 100);
        assert_eq!(t[199], ValueTier::Top1);
        assert_eq!(t[0], ValueTier::Rest);
    }

    #[test]
    fn thresholds_are_checked_and_applied() {
        let c = ChurnThresholds::default();
        assert_eq!(c.risk(0.2), ChurnRisk::High);
        assert_eq!(c.risk(0.6), ChurnRisk::Medium);
        assert_eq!(c.risk(0.95), ChurnRisk::Low);
        assert!(ChurnThresholds {
            high: 0.9,
            medium: 0.5
        }
        .check()
        .is_err());
    }
}
