//! Campaign uplift: treated against control, per segment and overall.
//!
//! Conversion: the difference of the two rates with Newcombe's hybrid score
//! interval (from each rate's Wilson interval: it stays sensible with no or
//! few conversions, where the Wald interval collapses to a point or
//! excludes 0 beside a large p-value) and the two-proportion z-test's
//! p-value (pooled); the relative uplift's interval by the delta method on
//! the log of the rate ratio. Revenue per customer: Welch's t-test (unequal
//! variances, Welch–Satterthwaite degrees of freedom); the relative
//! uplift's interval by the delta method on the ratio of means.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

use super::groups::Group;

/// Below this many customers in an arm, or this many conversions (or
/// non-conversions), an interval is not worth much: the result says so.
pub const MIN_ARM: usize = 30;
pub const MIN_EVENTS: usize = 5;

/// One arm's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub customers: usize,
    pub conversions: usize,
    pub conversion_rate: f64,
    pub revenue_per_customer: f64,
    /// Sample standard deviation of revenue per customer.
    pub revenue_sd: f64,
}

/// An estimate and its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Uplift of one stratum (a segment, or every customer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uplift {
    /// The segment id, or `"all"`.
    pub stratum: String,
    pub treatment: Arm,
    pub control: Arm,
    /// Treated minus control conversion rate.
    pub conversion: Interval,
    /// The conversion difference over the control rate (`None` when either
    /// group never converted: the log-ratio interval needs both).
    pub conversion_relative: Option<Interval>,
    pub conversion_p_value: f64,
    /// Treated minus control revenue per customer.
    pub revenue: Interval,
    /// The revenue difference over the control's (`None` when the control
    /// group had no revenue).
    pub revenue_relative: Option<Interval>,
    pub revenue_p_value: f64,
    /// Set when the groups are too small for the intervals to mean much.
    pub warning: Option<String>,
}

impl Uplift {
    /// The stratum as tables show it: one too small for its intervals to
    /// mean much is marked in its row, not only in a warning beside it.
    pub fn label(&self) -> String {
        if self.warning.is_some() {
            format!("{} (small)", self.stratum)
        } else {
            self.stratum.clone()
        }
    }
}

fn arm(rows: &[(bool, f64)]) -> Arm {
    let n = rows.len();
    let conversions = rows.iter().filter(|r| r.0).count();
    let mean = rows.iter().map(|r| r.1).sum::<f64>() / n.max(1) as f64;
    let var = if n > 1 {
        rows.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        f64::NAN
    };
    Arm {
        customers: n,
        conversions,
        conversion_rate: conversions as f64 / n.max(1) as f64,
        revenue_per_customer: mean,
        revenue_sd: var.sqrt(),
    }
}

/// Wilson's score interval for `k` successes in `n` trials.
fn wilson(k: usize, n: usize, z: f64) -> (f64, f64) {
    let (k, n) = (k as f64, n.max(1) as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let d = 1.0 + z2 / n;
    (
        ((centre - half) / d).max(0.0),
        ((centre + half) / d).min(1.0),
    )
}

fn z975() -> f64 {
    Normal::standard().inverse_cdf(0.975)
}

/// Two-sided p-value of a standard normal statistic.
fn normal_p(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    2.0 * Normal::standard().sf(z.abs())
}

/// Uplift of treated over control among `rows` (group, converted, revenue).
pub fn uplift(stratum: &str, rows: &[super::Observation]) -> Uplift {
    let pick = |g: Group| -> Vec<(bool, f64)> {
        rows.iter()
            .filter(|r| r.0 == g)
            .map(|r| (r.1, r.2))
            .collect()
    };
    let (t, c) = (arm(&pick(Group::Treatment)), arm(&pick(Group::Control)));
    let (nt, nc) = (t.customers as f64, c.customers as f64);
    let (pt, pc) = (t.conversion_rate, c.conversion_rate);
    let z = z975();
    // Conversion: Newcombe (1998), method 10.
    let diff = pt - pc;
    let (lt, ut) = wilson(t.conversions, t.customers, z);
    let (lc, uc) = wilson(c.conversions, c.customers, z);
    let conversion = Interval {
        estimate: diff,
        low: diff - ((pt - lt).powi(2) + (uc - pc).powi(2)).sqrt(),
        high: diff + ((ut - pt).powi(2) + (pc - lc).powi(2)).sqrt(),
    };
    let pooled = (t.conversions + c.conversions) as f64 / (nt + nc);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc)).sqrt();
    let conversion_p_value = if se_pooled > 0.0 {
        normal_p(diff / se_pooled)
    } else {
        1.0
    };
    let conversion_relative = (pc > 0.0 && pt > 0.0).then(|| {
        let ratio = pt / pc;
        let se_log = ((1.0 - pt) / (nt * pt) + (1.0 - pc) / (nc * pc)).sqrt();
        Interval {
            estimate: ratio - 1.0,
            low: ratio * (-z * se_log).exp() - 1.0,
            high: ratio * (z * se_log).exp() - 1.0,
        }
    });
    // Revenue: Welch.
    let (mt, mc) = (t.revenue_per_customer, c.revenue_per_customer);
    let (a, b) = (t.revenue_sd.powi(2) / nt, c.revenue_sd.powi(2) / nc);
    let se_r = (a + b).sqrt();
    let df = (a + b).powi(2) / (a * a / (nt - 1.0) + b * b / (nc - 1.0));
    let (q, revenue_p_value) = if se_r > 0.0 && df.is_finite() && df > 0.0 {
        let dist = StudentsT::new(0.0, 1.0, df).expect("positive degrees of freedom");
        let stat = (mt - mc) / se_r;
        (dist.inverse_cdf(0.975), 2.0 * dist.sf(stat.abs()))
    } else if se_r == 0.0 {
        (0.0, if mt == mc { 1.0 } else { 0.0 })
    } else {
        (f64::NAN, f64::NAN)
    };
    let revenue = Interval {
        estimate: mt - mc,
        low: mt - mc - q * se_r,
        high: mt - mc + q * se_r,
    };
    let revenue_relative = (mc > 0.0).then(|| {
        let se_rel = (a / (mc * mc) + mt * mt * b / mc.powi(4)).sqrt();
        let rel = mt / mc - 1.0;
        Interval {
            estimate: rel,
            low: rel - q * se_rel,
            high: rel + q * se_rel,
        }
    });
    let small = [&t, &c].iter().any(|arm| {
        arm.customers < MIN_ARM
            || arm.conversions < MIN_EVENTS
            || arm.customers - arm.conversions < MIN_EVENTS
    });
    let warning = small.then(|| {
        format!(
            "{stratum}: groups too small for the intervals to mean much ({} treated with {} conversions, {} control with {}; want at least {MIN_ARM} customers and {MIN_EVENTS} conversions and non-conversions in each)",
            t.customers, t.conversions, c.customers, c.conversions
        )
    });
    Uplift {
        stratum: stratum.to_string(),
        treatment: t,
        control: c,
        conversion,
        conversion_relative,
        conversion_p_value,
        revenue,
        revenue_relative,
        revenue_p_value,
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(
        n: usize,
        converted: usize,
        g: Group,
        revenue: impl Fn(usize) -> f64,
    ) -> Vec<(Group, bool, f64)> {
        (0..n).map(|i| (g, i < converted, revenue(i))).collect()
    }

    #[test]
    fn conversion_uplift_matches_hand_computed_values() {
        // 120 of 1000 treated, 100 of 1000 control.
        let mut r = rows(1000, 120, Group::Treatment, |_| 0.0);
        r.extend(rows(1000, 100, Group::Control, |_| 0.0));
        let u = uplift("all", &r);
        assert!((u.conversion.estimate - 0.02).abs() < 1e-12);
        // statsmodels' confint_proportions_2indep(120, 1000, 100, 1000,
        // method="newcomb"): (-0.0074921675, 0.0475506675).
        assert!(
            (u.conversion.low + 0.007_492_167_5).abs() < 1e-8,
            "{:?}",
            u.conversion
        );
        assert!(
            (u.conversion.high - 0.047_550_667_5).abs() < 1e-8,
            "{:?}",
            u.conversion
        );
        // z = 0.02 / √(.11·.89·.002) = 1.42932, p = 0.15292 (two-sided)
        assert!(
            (u.conversion_p_value - 0.152_918).abs() < 1e-5,
            "{}",
            u.conversion_p_value
        );
        let rel = u.conversion_relative.unwrap();
        assert!((rel.estimate - 0.2).abs() < 1e-12);
        assert!(rel.low < 0.2 && rel.high > 0.2);
        assert!(u.warning.is_none());
    }

    #[test]
    fn revenue_uplift_matches_welch_as_scipy_computes_it() {
        // scipy.stats.ttest_ind(t, c, equal_var=False) on the same values:
        // difference 2.47375, 95 % interval [1.5317078, 3.4157922],
        // p = 3.298238e-07 (df 694.2).
        let mut r = rows(400, 40, Group::Treatment, |i| (i % 7) as f64 * 3.5);
        r.extend(rows(300, 30, Group::Control, |i| (i % 5) as f64 * 4.0));
        let u = uplift("all", &r);
        assert!((u.revenue.estimate - 2.47375).abs() < 1e-12);
        assert!(
            (u.revenue.low - 1.531_707_83).abs() < 1e-6,
            "{}",
            u.revenue.low
        );
        assert!(
            (u.revenue.high - 3.415_792_17).abs() < 1e-6,
            "{}",
            u.revenue.high
        );
        assert!(
            (u.revenue_p_value / 3.298_238e-7 - 1.0).abs() < 1e-3,
            "{}",
            u.revenue_p_value
        );
    }

    /// No conversions in control, or none anywhere: the interval keeps its
    /// width (Wald's gave [+10, +34] beside p = 0.24, and [0, 0]), as
    /// statsmodels' Newcombe interval gives: (6/27 vs 0/9) →
    /// (-0.0986805, 0.4075693); (0/100 vs 0/100) → ±0.0369935.
    #[test]
    fn intervals_stay_honest_without_conversions() {
        let mut r = rows(27, 6, Group::Treatment, |_| 0.0);
        r.extend(rows(9, 0, Group::Control, |_| 0.0));
        let u = uplift("0", &r);
        assert!(
            (u.conversion.low + 0.098_680_48).abs() < 1e-7,
            "{:?}",
            u.conversion
        );
        assert!(
            (u.conversion.high - 0.407_569_29).abs() < 1e-7,
            "{:?}",
            u.conversion
        );
        let mut r = rows(100, 0, Group::Treatment, |_| 0.0);
        r.extend(rows(100, 0, Group::Control, |_| 0.0));
        let u = uplift("all", &r);
        assert_eq!(u.conversion.estimate, 0.0);
        assert!(
            (u.conversion.high - 0.036_993_50).abs() < 1e-7,
            "{:?}",
            u.conversion
        );
        assert!(
            (u.conversion.low + 0.036_993_50).abs() < 1e-7,
            "{:?}",
            u.conversion
        );
    }

    #[test]
    fn small_groups_and_no_control_conversions_are_flagged() {
        let mut r = rows(20, 3, Group::Treatment, |i| i as f64);
        r.extend(rows(20, 0, Group::Control, |_| 0.0));
        let u = uplift("3", &r);
        assert!(u.conversion_relative.is_none());
        assert!(u
            .warning
            .as_deref()
            .unwrap()
            .starts_with("3: groups too small"));
    }
}
