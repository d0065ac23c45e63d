//! Choosing k: fit each k in a range and score it.

use std::ops::RangeInclusive;

use ndarray::{ArrayView2, Axis};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::Result;
use crate::kmeans::{adjusted_rand_index, evaluate, FitControl, KMeansModel, KMeansParams};

/// Scores of one k. Metrics are measured where k-means clusters: after the
/// model's log1p and standard scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KScore {
    pub k: usize,
    /// Within-cluster sum of squares: look for the elbow.
    pub inertia: f64,
    /// Mean silhouette on a sample (higher is better).
    pub silhouette: f64,
    /// Lower is better.
    pub davies_bouldin: f64,
    /// Higher is better.
    pub calinski_harabasz: f64,
    /// The smallest segment's share of customers.
    #[serde(default)]
    pub min_share: f64,
    /// Mean adjusted Rand index between this fit and fits on bootstrap
    /// samples, on the same customers: 1 means resampling the base gives
    /// the same segments.
    #[serde(default)]
    pub stability: f64,
    /// Whether this k passed the minimum share and the stability bar.
    #[serde(default)]
    pub eligible: bool,
}

/// The scores of every k tried, and the one recommended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KSweep {
    pub scores: Vec<KScore>,
    pub recommended_k: usize,
    pub rule: String,
    /// Why this k, in words.
    #[serde(default)]
    pub reason: String,
}

/// How the sweep recommends k, in words (also in the report).
pub const RULE: &str = "among the k whose smallest segment holds at least the minimum share \
    of customers (default 5 %) and whose segments are stable under resampling (mean adjusted \
    Rand index at least 0.75 between the fit and 3 fits on bootstrap samples), the one with \
    the highest mean silhouette; a tie goes to the smaller k. If no k passes both, the minimum \
    share alone decides which k compete; if none passes that either, the silhouette alone.";

/// What a sweep measures each k by.
#[derive(Debug, Clone, Copy)]
pub struct Criteria {
    /// Rows sampled for the silhouette (it costs `O(s²)`).
    pub silhouette_sample: usize,
    /// The smallest segment an eligible k may have (share of customers).
    pub min_share: f64,
}

/// Stability needed for a k to be eligible.
pub const STABLE: f64 = 0.75;

/// A stability to two decimals, as every table and reason shows it:
/// rounded to nearest, except that a value just under [`STABLE`] is
/// rounded down, so it never reads as meeting the bar (0.7459 is 0.74, not
/// 0.75; 0.5254 is 0.53).
pub fn shown_stability(ari: f64) -> String {
    let nearest = (ari * 100.0).round() / 100.0;
    let shown = if ari < STABLE && nearest >= STABLE {
        (ari * 100.0).floor() / 100.0
    } else {
        nearest
    };
    format!("{shown:.2}")
}
/// Bootstrap fits per k.
const BOOTSTRAPS: u64 = 3;
/// Rows per bootstrap sample, and customers the labelings are compared on.
const BOOTSTRAP_ROWS: usize = 5000;
const COMPARED_ROWS: usize = 2000;

/// Fits every k in `ks` on the backend (data uploaded once per fit) and
/// returns the sweep and the fitted models, in `ks` order. `on_fit` is called
/// after each k with its 1-based position.
pub fn sweep_k(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    ks: RangeInclusive<usize>,
    base: &KMeansParams,
    criteria: Criteria,
    control: &FitControl,
    on_fit: &dyn Fn(usize, usize),
) -> Result<(KSweep, Vec<KMeansModel>)> {
    let Criteria {
        silhouette_sample,
        min_share,
    } = criteria;
    let total = ks.clone().count();
    let mut scores = Vec::with_capacity(total);
    let mut models = Vec::with_capacity(total);
    let n = x.nrows();
    let seed = base.seed_value();
    // The customers every labeling is compared on: an evenly spaced subset.
    let step = n.div_ceil(COMPARED_ROWS).max(1);
    let compared: Vec<usize> = (0..n).step_by(step).collect();
    let x_compared = x.select(Axis(0), &compared);
    for (i, k) in ks.enumerate() {
        let model = base.clone().with_k(k).fit_with(backend, x, None, control)?;
        let scaled = model.scaler().transform(x);
        let e = evaluate(scaled.view(), model.labels(), k, silhouette_sample, seed);
        let smallest = model.cluster_sizes().iter().copied().min().unwrap_or(0);
        let here: Vec<u32> = compared.iter().map(|&r| model.labels()[r]).collect();
        let mut ari = 0.0;
        for b in 0..BOOTSTRAPS {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ (k as u64) << 8 ^ b);
            let rows: Vec<usize> = (0..BOOTSTRAP_ROWS.min(n))
                .map(|_| rng.random_range(0..n))
                .collect();
            let sample = x.select(Axis(0), &rows);
            let boot = base
                .clone()
                .with_k(k.min(rows.len()))
                .n_init(1)
                .seed(seed.wrapping_add(b + 1))
                .fit_with(backend, sample.view(), None, control)?;
            let there = boot.predict(backend, x_compared.view())?.labels;
            ari += adjusted_rand_index(&here, &there);
        }
        let stability = ari / BOOTSTRAPS as f64;
        let share = smallest as f64 / n.max(1) as f64;
        scores.push(KScore {
            k,
            inertia: model.inertia(),
            silhouette: e.silhouette,
            davies_bouldin: e.davies_bouldin,
            calinski_harabasz: e.calinski_harabasz,
            min_share: share,
            stability,
            eligible: share >= min_share && stability >= STABLE,
        });
        models.push(model);
        on_fit(i + 1, total);
    }
    let (recommended_k, reason) = recommend(&scores, min_share);
    Ok((
        KSweep {
            scores,
            recommended_k,
            rule: RULE.to_owned(),
            reason,
        },
        models,
    ))
}

/// Applies [`RULE`]: the recommended k and why, in words.
pub fn recommend(scores: &[KScore], min_share: f64) -> (usize, String) {
    fn best(pool: Vec<&KScore>) -> Option<&KScore> {
        pool.into_iter().fold(None, |best, s| match best {
            Some(b) if b.silhouette >= s.silhouette => Some(b),
            _ => Some(s),
        })
    }
    let pct = |v: f64| format!("{:.0} %", v * 100.0);
    let eligible: Vec<&KScore> = scores.iter().filter(|s| s.eligible).collect();
    let big_enough: Vec<&KScore> = scores.iter().filter(|s| s.min_share >= min_share).collect();
    let (chosen, why) = if let Some(b) = best(eligible) {
        (b, format!(
            "the highest silhouette ({:.3}) among the k whose smallest segment holds at least {} of customers and whose segments are stable under resampling (adjusted Rand index ≥ {STABLE})",
            b.silhouette,
            pct(min_share)
        ))
    } else if let Some(b) = best(big_enough) {
        (b, format!(
            "no k was stable under resampling (adjusted Rand index ≥ {STABLE}); the highest silhouette ({:.3}) among the k whose smallest segment holds at least {}",
            b.silhouette,
            pct(min_share)
        ))
    } else if let Some(b) = best(scores.iter().collect()) {
        (
            b,
            format!(
                "every k has a segment below {} of customers; the highest silhouette ({:.3})",
                pct(min_share),
                b.silhouette
            ),
        )
    } else {
        return (1, "no k was tried".into());
    };
    let mut reason = format!("k = {}: {why}", chosen.k);
    let out: Vec<String> = scores
        .iter()
        .filter(|s| s.k != chosen.k && !s.eligible)
        .map(|s| {
            if s.min_share < min_share {
                format!("k = {} has a segment of {:.1} %", s.k, s.min_share * 100.0)
            } else {
                format!(
                    "k = {} is unstable (ARI {})",
                    s.k,
                    shown_stability(s.stability)
                )
            }
        })
        .collect();
    if !out.is_empty() {
        reason.push_str("; left out: ");
        reason.push_str(&out.join(", "));
    }
    (chosen.k, reason)
}

/// Parses `MIN..MAX` (inclusive), as the CLI takes it.
pub fn parse_k_range(text: &str) -> Option<RangeInclusive<usize>> {
    let (lo, hi) = text.trim().split_once("..")?;
    let hi = hi.strip_prefix('=').unwrap_or(hi);
    let (lo, hi) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (1 <= lo && lo <= hi).then_some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(k: usize, silhouette: f64, min_share: f64, stability: f64) -> KScore {
        KScore {
            k,
            inertia: 0.0,
            silhouette,
            davies_bouldin: 0.0,
            calinski_harabasz: 0.0,
            min_share,
            stability,
            eligible: min_share >= 0.05 && stability >= STABLE,
        }
    }

    #[test]
    fn recommends_the_best_eligible_silhouette_and_says_why() {
        let s = [
            score(3, 0.4, 0.2, 0.9),
            score(4, 0.6, 0.1, 0.95),
            score(5, 0.6, 0.1, 0.9),
            score(6, 0.7, 0.02, 0.9),
            score(7, 0.8, 0.1, 0.5),
        ];
        let (k, why) = recommend(&s, 0.05);
        assert_eq!(k, 4, "6 is too small a segment, 7 unstable, 5 ties 4");
        assert!(
            why.starts_with("k = 4: the highest silhouette (0.600)"),
            "{why}"
        );
        assert!(why.contains("k = 6 has a segment of 2.0 %"), "{why}");
        assert!(why.contains("k = 7 is unstable (ARI 0.50)"), "{why}");
        // Nothing stable: the share alone.
        let s = [score(3, 0.4, 0.2, 0.1), score(4, 0.6, 0.01, 0.1)];
        assert_eq!(recommend(&s, 0.05).0, 3);
        // Nothing big enough: the silhouette alone.
        let s = [score(3, 0.4, 0.01, 0.9), score(4, 0.6, 0.01, 0.9)];
        assert_eq!(recommend(&s, 0.05).0, 4);
    }

    /// The reason and the tables show a stability alike: to nearest, but
    /// never up to the bar from under it.
    #[test]
    fn stabilities_are_shown_alike_and_never_at_the_bar_from_under_it() {
        assert_eq!(shown_stability(0.52537), "0.53");
        assert_eq!(shown_stability(0.7459), "0.74");
        assert_eq!(shown_stability(0.75), "0.75");
        assert_eq!(shown_stability(0.9961), "1.00");
        let (_, why) = recommend(
            &[score(3, 0.4, 0.2, 0.9), score(4, 0.6, 0.2, 0.52537)],
            0.05,
        );
        assert!(why.contains("k = 4 is unstable (ARI 0.53)"), "{why}");
    }

    #[test]
    fn k_ranges_parse_inclusively() {
        assert_eq!(parse_k_range("2..12"), Some(2..=12));
        assert_eq!(parse_k_range("3..=3"), Some(3..=3));
        for bad in ["12..2", "0..4", "2-12", "a..b", ""] {
            assert_eq!(parse_k_range(bad), None, "{bad}");
        }
    }
}
