//! Segment profiles in the units a marketing team reads: sizes, means,
//! medians, lift, a generated description, the RFM names inside, outliers.

use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::features::FEATURE_NAMES;
use super::rfm::RfmSegment;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    pub feature: String,
    pub mean: f64,
    pub median: f64,
    /// Segment mean over the whole base's mean (1 = typical; 0 when the base
    /// mean is 0).
    pub lift: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentProfile {
    /// Stable segment id (kept across refreshes).
    pub id: usize,
    pub size: usize,
    /// Fraction of all customers.
    pub share: f64,
    /// E.g. "recent, frequent, high spend".
    pub description: String,
    pub features: Vec<FeatureProfile>,
    /// The most common RFM segments inside, most common first (at most 3).
    pub top_rfm_segments: Vec<(RfmSegment, usize)>,
    /// Squared distance above which a member is flagged as an outlier.
    pub outlier_threshold: f32,
    pub outliers: usize,
    /// Mean assignment margin of the members (higher: more clear-cut).
    pub mean_margin: f64,
}

/// Everything the profiles are computed from, one entry per customer.
pub struct ProfileInput<'a> {
    /// `n × 5` features in original units.
    pub values: ArrayView2<'a, f32>,
    pub labels: &'a [u32],
    pub distances: &'a [f32],
    pub margins: &'a [f32],
    pub rfm: &'a [RfmSegment],
    /// `k × 5` centroids after log1p and standard scaling: z-scores.
    pub scaled_centroids: ArrayView2<'a, f32>,
    /// Percentile (0–100) of a segment's distances above which a member is
    /// an outlier.
    pub outlier_percentile: f64,
}

/// Profiles every segment and flags each customer as an outlier or not.
pub fn profile(input: &ProfileInput) -> (Vec<SegmentProfile>, Vec<bool>) {
    let k = input.scaled_centroids.nrows();
    let n = input.labels.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &l) in input.labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    let base_mean = input.values.mean_axis(Axis(0)).expect("n > 0");
    let mut outlier = vec![false; n];
    let profiles = members
        .iter()
        .enumerate()
        .map(|(id, rows)| {
            let features = FEATURE_NAMES
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    let mut v: Vec<f64> =
                        rows.iter().map(|&i| input.values[[i, j]] as f64).collect();
                    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                    let base = base_mean[j] as f64;
                    FeatureProfile {
                        feature: name.to_string(),
                        mean,
                        median: median(&mut v),
                        lift: if base != 0.0 { mean / base } else { 0.0 },
                    }
                })
                .collect();
            let mut d: Vec<f32> = rows.iter().map(|&i| input.distances[i]).collect();
            let threshold = percentile(&mut d, input.outlier_percentile);
            let mut outliers = 0;
            for &i in rows {
                if input.distances[i] > threshold {
                    outlier[i] = true;
                    outliers += 1;
                }
            }
            SegmentProfile {
                id,
                size: rows.len(),
                share: rows.len() as f64 / n as f64,
                description: describe(input.scaled_centroids.row(id).as_slice().unwrap_or(&[])),
                features,
                top_rfm_segments: top_rfm(rows, input.rfm),
                outlier_threshold: threshold,
                outliers,
                mean_margin: rows.iter().map(|&i| input.margins[i] as f64).sum::<f64>()
                    / rows.len().max(1) as f64,
            }
        })
        .collect();
    (profiles, outlier)
}

/// How far (in standard deviations of the scaled features) a centroid must
/// sit from the average before the description mentions it.
const NOTABLE: f32 = 0.5;

/// Words for a centroid's z-scores, in feature order: low word, high word.
const WORDS: [(&str, &str); 5] = [
    ("recent", "lapsed"),
    ("infrequent", "frequent"),
    ("low spend", "high spend"),
    ("small baskets", "big baskets"),
    ("new", "long-standing"),
];

/// A short description from a centroid in scaled units, e.g.
/// "recent, frequent, high spend".
pub fn describe(z: &[f32]) -> String {
    let words: Vec<&str> = z
        .iter()
        .zip(WORDS)
        .filter_map(|(&z, (low, high))| {
            if z <= -NOTABLE {
                Some(low)
            } else if z >= NOTABLE {
                Some(high)
            } else {
                None
            }
        })
        .collect();
    if words.is_empty() {
        "typical on every feature".into()
    } else {
        words.join(", ")
    }
}

fn top_rfm(rows: &[usize], rfm: &[RfmSegment]) -> Vec<(RfmSegment, usize)> {
    let mut counts = std::collections::BTreeMap::<RfmSegment, usize>::new();
    for &i in rows {
        *counts.entry(rfm[i]).or_default() += 1;
    }
    let mut top: Vec<_> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(3);
    top
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Nearest-rank percentile (`p` in 0–100); +∞ for an empty slice.
pub fn percentile(v: &mut [f32], p: f64) -> f32 {
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(f32::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_notable_features_only() {
        assert_eq!(
            describe(&[-1.0, 1.2, 0.9, 0.1, 0.0]),
            "recent, frequent, high spend"
        );
        assert_eq!(
            describe(&[1.5, -0.7, 0.2, 0.0, 0.6]),
            "lapsed, infrequent, long-standing"
        );
        assert_eq!(describe(&[0.1; 5]), "typical on every feature");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
