//! Choosing k: fit each k in a range and score it.

use std::ops::RangeInclusive;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::Result;
use crate::kmeans::{evaluate, FitControl, KMeansModel, KMeansParams};

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
}

/// The scores of every k tried, and the one recommended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KSweep {
    pub scores: Vec<KScore>,
    pub recommended_k: usize,
    pub rule: String,
}

/// How the sweep recommends k, in words (also in the report).
pub const RULE: &str = "the k with the highest mean silhouette (on a sample); \
    a tie goes to the smaller k. With a single k in the range, that k.";

/// Fits every k in `ks` on the backend (data uploaded once per fit) and
/// returns the sweep and the fitted models, in `ks` order. `on_fit` is called
/// after each k with its 1-based position.
pub fn sweep_k(
    backend: &dyn Backend,
    x: ArrayView2<f32>,
    ks: RangeInclusive<usize>,
    base: &KMeansParams,
    silhouette_sample: usize,
    control: &FitControl,
    on_fit: &dyn Fn(usize, usize),
) -> Result<(KSweep, Vec<KMeansModel>)> {
    let total = ks.clone().count();
    let mut scores = Vec::with_capacity(total);
    let mut models = Vec::with_capacity(total);
    for (i, k) in ks.enumerate() {
        let model = base.clone().with_k(k).fit_with(backend, x, None, control)?;
        let scaled = model.scaler().transform(x);
        let e = evaluate(
            scaled.view(),
            model.labels(),
            k,
            silhouette_sample,
            base.seed_value(),
        );
        scores.push(KScore {
            k,
            inertia: model.inertia(),
            silhouette: e.silhouette,
            davies_bouldin: e.davies_bouldin,
            calinski_harabasz: e.calinski_harabasz,
        });
        models.push(model);
        on_fit(i + 1, total);
    }
    let recommended_k = recommend(&scores);
    Ok((
        KSweep {
            scores,
            recommended_k,
            rule: RULE.to_owned(),
        },
        models,
    ))
}

/// Applies [`RULE`].
pub fn recommend(scores: &[KScore]) -> usize {
    scores
        .iter()
        .fold(None::<&KScore>, |best, s| match best {
            Some(b) if b.silhouette >= s.silhouette => Some(b),
            _ => Some(s),
        })
        .map_or(1, |s| s.k)
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

    fn score(k: usize, silhouette: f64) -> KScore {
        KScore {
            k,
            inertia: 0.0,
            silhouette,
            davies_bouldin: 0.0,
            calinski_harabasz: 0.0,
        }
    }

    #[test]
    fn recommends_the_best_silhouette_and_the_smaller_k_on_ties() {
        let s = [score(2, 0.4), score(3, 0.6), score(4, 0.6), score(5, 0.5)];
        assert_eq!(recommend(&s), 3);
        assert_eq!(recommend(&s[3..]), 5);
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
