//! Segment profiles in the units a marketing team reads: sizes, means,
//! medians, lift, a generated description, the RFM names inside, outliers.

use ndarray::{ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::features::{AVG_ORDER, FEATURE_NAMES, FREQUENCY, MONETARY, RECENCY, TENURE};
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
    /// With `--clv`: the members' predicted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueProfile>,
}

/// A segment's predicted value (`segment --clv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueProfile {
    pub mean_clv: f64,
    pub total_clv: f64,
    /// The segment's share of the whole base's predicted value.
    pub value_share: f64,
    pub mean_p_alive: f64,
    /// Members at high churn risk.
    pub high_churn_risk: usize,
}

/// Everything the profiles are computed from, one entry per customer.
pub struct ProfileInput<'a> {
    /// `n × 5` features in original units.
    pub values: ArrayView2<'a, f64>,
    pub labels: &'a [u32],
    pub distances: &'a [f32],
    pub margins: &'a [f32],
    pub rfm: &'a [RfmSegment],
    /// Number of segments (labels are `0..k`).
    pub k: usize,
    /// Percentile (0–100) of a segment's distances above which a member is
    /// an outlier.
    pub outlier_percentile: f64,
}

/// Profiles every segment and flags each customer as an outlier or not.
pub fn profile(input: &ProfileInput) -> (Vec<SegmentProfile>, Vec<bool>) {
    let k = input.k;
    let n = input.labels.len();
    let base = BaseStats::of(input.values);
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
            let features: Vec<FeatureProfile> = FEATURE_NAMES
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    let mut v: Vec<f64> = rows.iter().map(|&i| input.values[[i, j]]).collect();
                    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
                    let base = base_mean[j];
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
                description: if rows.is_empty() {
                    "empty".into()
                } else {
                    describe(
                        &features.iter().map(|f| f.median).collect::<Vec<_>>(),
                        &base,
                    )
                },
                features,
                top_rfm_segments: top_rfm(rows, input.rfm),
                outlier_threshold: threshold,
                outliers,
                mean_margin: rows.iter().map(|&i| input.margins[i] as f64).sum::<f64>()
                    / rows.len().max(1) as f64,
                value: None,
            }
        })
        .collect();
    (profiles, outlier)
}

/// A customer is "new" when their first purchase is at most this many days
/// before the as-of date (a segment: its median tenure).
pub const NEW_DAYS: f64 = 90.0;
/// "Lapsed": no purchase for at least this many days (median recency).
pub const LAPSED_DAYS: f64 = 180.0;
/// "Recent": a purchase within this many days (median recency).
pub const RECENT_DAYS: f64 = 60.0;
/// "Long-standing": a first purchase at least this many days ago.
pub const LONG_STANDING_DAYS: f64 = 365.0;
/// A segment's median earns a relative word ("high spend") when it sits in
/// the top or bottom third of the whole base.
const THIRD: f64 = 1.0 / 3.0;
/// A feature whose robust spread across the base is below this earns no
/// word: in a single cohort, tenure differs by days, not by kind of customer.
pub const MIN_SPREAD: f64 = 0.25;

/// The whole base's distribution of each feature, for placing a segment's
/// median in it.
pub struct BaseStats {
    sorted: Vec<Vec<f64>>,
}

impl BaseStats {
    pub fn of<A: Copy + Into<f64>>(values: ArrayView2<A>) -> Self {
        Self {
            sorted: values
                .axis_iter(Axis(1))
                .map(|c| {
                    let mut v: Vec<f64> = c.iter().map(|&x| x.into()).collect();
                    v.sort_by(f64::total_cmp);
                    v
                })
                .collect(),
        }
    }

    /// The share of customers below `value` (ties count half): 0.9 means
    /// the value is higher than 90 % of the base.
    pub fn rank(&self, feature: usize, value: f64) -> f64 {
        let v = &self.sorted[feature];
        let below = v.partition_point(|&x| x < value);
        let equal = v.partition_point(|&x| x <= value) - below;
        (below as f64 + equal as f64 / 2.0) / v.len().max(1) as f64
    }

    /// Interquartile range over the median (robust to heavy tails); 0 for
    /// a constant or empty column.
    pub fn spread(&self, feature: usize) -> f64 {
        let v = &self.sorted[feature];
        if v.is_empty() {
            return 0.0;
        }
        let q = |p: f64| v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        let (q1, q2, q3) = (q(0.25), q(0.5), q(0.75));
        if q2.abs() > 0.0 {
            (q3 - q1) / q2.abs()
        } else if q3 > q1 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

/// A description true of a segment's medians (`medians` in
/// [`FEATURE_NAMES`] order), e.g. "recent, frequent, high spend".
///
/// - recency: "recent" when the median is in the base's lowest third and
///   within [`RECENT_DAYS`]; "lapsed" when in the highest third and at
///   least [`LAPSED_DAYS`].
/// - frequency: "one-time buyers" when the median is one purchase;
///   "frequent" / "infrequent" by third otherwise.
/// - monetary and average order value: "high/low spend", "big/small
///   baskets" by third.
/// - tenure: "new" only when the median first purchase is within
///   [`NEW_DAYS`]; "long-standing" when in the highest third and at least
///   [`LONG_STANDING_DAYS`].
///
/// A feature whose spread across the base is below [`MIN_SPREAD`] earns no
/// word (days apart in a single cohort are not a difference in kind).
pub fn describe(medians: &[f64], base: &BaseStats) -> String {
    let mut words: Vec<&str> = Vec::new();
    for (j, &m) in medians.iter().enumerate() {
        if base.spread(j) < MIN_SPREAD && !(j == FREQUENCY && m <= 1.0) {
            continue;
        }
        let r = base.rank(j, m);
        let (low, high) = (r <= THIRD, r >= 1.0 - THIRD);
        let word = match j {
            RECENCY if low && m <= RECENT_DAYS => Some("recent"),
            RECENCY if high && m >= LAPSED_DAYS => Some("lapsed"),
            FREQUENCY if m <= 1.0 => Some("one-time buyers"),
            FREQUENCY if high => Some("frequent"),
            FREQUENCY if low => Some("infrequent"),
            MONETARY if high => Some("high spend"),
            MONETARY if low => Some("low spend"),
            AVG_ORDER if high => Some("big baskets"),
            AVG_ORDER if low => Some("small baskets"),
            TENURE if m <= NEW_DAYS => Some("new"),
            TENURE if high && m >= LONG_STANDING_DAYS => Some("long-standing"),
            _ => None,
        };
        words.extend(word);
    }
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
    fn descriptions_are_true_of_the_medians() {
        // A base of 100 customers with spread on every feature.
        let rows: Vec<f32> = (0..100)
            .flat_map(|i| {
                let i = i as f32;
                [
                    i * 5.0,
                    1.0 + (i / 10.0).floor(),
                    10.0 * i,
                    5.0 + i,
                    30.0 + 10.0 * i,
                ]
            })
            .collect();
        let x = ndarray::Array2::from_shape_vec((100, 5), rows).unwrap();
        let base = BaseStats::of(x.view());
        assert_eq!(
            describe(&[20.0, 9.0, 950.0, 100.0, 60.0], &base),
            "recent, frequent, high spend, big baskets, new"
        );
        assert_eq!(
            describe(&[480.0, 1.0, 20.0, 7.0, 1000.0], &base),
            "lapsed, one-time buyers, low spend, small baskets, long-standing"
        );
        // Lowest quarter of tenure but 120 days: not "new".
        assert_eq!(
            describe(&[250.0, 5.0, 500.0, 55.0, 120.0], &base),
            "typical on every feature"
        );
        // A single cohort: tenure 463–506 days earns no word at all.
        let cohort: Vec<f32> = (0..100)
            .flat_map(|i| [i as f32 * 4.0, 2.0, 50.0, 25.0, 463.0 + (i % 44) as f32])
            .collect();
        let c = BaseStats::of(
            ndarray::Array2::from_shape_vec((100, 5), cohort)
                .unwrap()
                .view(),
        );
        assert!(c.spread(TENURE) < MIN_SPREAD);
        assert!(!describe(&[10.0, 2.0, 50.0, 25.0, 463.0], &c).contains("new"));
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
