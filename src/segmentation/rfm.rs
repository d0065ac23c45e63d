//! RFM scores (1–5 by quintile) and the standard named RFM segments.

use serde::{Deserialize, Serialize};

/// Quintile scores 1–5 of `values`; with `higher_is_better = false` (recency)
/// the smallest values score 5.
///
/// A value's score is `1 + ⌊5 · b / n⌋`, where `b` is the number of
/// customers strictly worse than it. So:
/// - equal values always share a score (no arbitrary tie-breaking);
/// - the worst value always scores 1, and distinct values fall into five
///   equal bins;
/// - a heavy tie (60% of customers with one order) takes the score of its
///   lowest member, and the next value jumps to where it ranks (here 4);
/// - a column with a single distinct value scores 3 (nothing to rank).
pub fn quintile_scores(values: &[f32], higher_is_better: bool) -> Vec<u8> {
    let n = values.len();
    let mut sorted: Vec<f32> = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.first() == sorted.last() {
        return vec![3; n];
    }
    values
        .iter()
        .map(|&v| {
            let worse = if higher_is_better {
                sorted.partition_point(|&s| s < v)
            } else {
                n - sorted.partition_point(|&s| s <= v)
            };
            (1 + 5 * worse / n) as u8
        })
        .collect()
}

/// A customer's recency, frequency and monetary scores, each 1–5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RfmScore {
    pub r: u8,
    pub f: u8,
    pub m: u8,
}

impl RfmScore {
    /// The frequency–monetary score: the mean of F and M, rounded up.
    pub fn fm(&self) -> u8 {
        (self.f + self.m).div_ceil(2)
    }

    pub fn code(&self) -> String {
        format!("{}{}{}", self.r, self.f, self.m)
    }

    pub fn segment(&self) -> RfmSegment {
        RfmSegment::of(self.r, self.fm())
    }
}

/// The standard named RFM segments. Serialised by their names as people
/// read them ("About to Sleep"), as in the CSV and over gRPC; the Rust
/// names of older files are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RfmSegment {
    Champions,
    Loyal,
    #[serde(rename = "Potential Loyalists", alias = "PotentialLoyalists")]
    PotentialLoyalists,
    New,
    Promising,
    #[serde(rename = "Need Attention", alias = "NeedAttention")]
    NeedAttention,
    #[serde(rename = "About to Sleep", alias = "AboutToSleep")]
    AboutToSleep,
    #[serde(rename = "At Risk", alias = "AtRisk")]
    AtRisk,
    #[serde(rename = "Can't Lose Them", alias = "CantLoseThem")]
    CantLoseThem,
    Hibernating,
    Lost,
}

/// Rows: R = 5 down to 1; columns: FM = 1 to 5.
const GRID: [[RfmSegment; 5]; 5] = {
    use RfmSegment::*;
    [
        [
            New,
            PotentialLoyalists,
            PotentialLoyalists,
            Champions,
            Champions,
        ],
        [
            Promising,
            PotentialLoyalists,
            PotentialLoyalists,
            Loyal,
            Loyal,
        ],
        [AboutToSleep, AboutToSleep, NeedAttention, Loyal, Loyal],
        [Hibernating, Hibernating, AtRisk, AtRisk, CantLoseThem],
        [Lost, Hibernating, AtRisk, AtRisk, CantLoseThem],
    ]
};

impl RfmSegment {
    pub const ALL: [RfmSegment; 11] = [
        Self::Champions,
        Self::Loyal,
        Self::PotentialLoyalists,
        Self::New,
        Self::Promising,
        Self::NeedAttention,
        Self::AboutToSleep,
        Self::AtRisk,
        Self::CantLoseThem,
        Self::Hibernating,
        Self::Lost,
    ];

    /// The segment for recency score `r` and frequency–monetary score `fm`
    /// (both 1–5), read from this table:
    ///
    /// | R \ FM | 1 | 2 | 3 | 4 | 5 |
    /// |---|---|---|---|---|---|
    /// | 5 | New | Potential Loyalists | Potential Loyalists | Champions | Champions |
    /// | 4 | Promising | Potential Loyalists | Potential Loyalists | Loyal | Loyal |
    /// | 3 | About to Sleep | About to Sleep | Need Attention | Loyal | Loyal |
    /// | 2 | Hibernating | Hibernating | At Risk | At Risk | Can't Lose Them |
    /// | 1 | Lost | Hibernating | At Risk | At Risk | Can't Lose Them |
    pub fn of(r: u8, fm: u8) -> Self {
        let r = r.clamp(1, 5) as usize;
        let fm = fm.clamp(1, 5) as usize;
        GRID[5 - r][fm - 1]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Champions => "Champions",
            Self::Loyal => "Loyal",
            Self::PotentialLoyalists => "Potential Loyalists",
            Self::New => "New",
            Self::Promising => "Promising",
            Self::NeedAttention => "Need Attention",
            Self::AboutToSleep => "About to Sleep",
            Self::AtRisk => "At Risk",
            Self::CantLoseThem => "Can't Lose Them",
            Self::Hibernating => "Hibernating",
            Self::Lost => "Lost",
        }
    }
}

impl std::fmt::Display for RfmSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Scores every customer from recency (lower is better), frequency and
/// monetary (higher is better).
pub fn rfm_scores(recency: &[f32], frequency: &[f32], monetary: &[f32]) -> Vec<RfmScore> {
    let r = quintile_scores(recency, false);
    let f = quintile_scores(frequency, true);
    let m = quintile_scores(monetary, true);
    (0..r.len())
        .map(|i| RfmScore {
            r: r[i],
            f: f[i],
            m: m[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_values_fall_into_five_equal_bins() {
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(quintile_scores(&v, true), [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        assert_eq!(quintile_scores(&v, false), [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]);
    }

    #[test]
    fn ties_share_a_score_and_constant_columns_are_neutral() {
        // 6 of 10 customers with one order: all score 1; two orders beat 60%.
        let v = [1., 1., 1., 1., 1., 1., 2., 2., 3., 9.];
        assert_eq!(quintile_scores(&v, true), [1, 1, 1, 1, 1, 1, 4, 4, 5, 5]);
        assert_eq!(quintile_scores(&[7.0; 4], true), [3, 3, 3, 3]);
        assert_eq!(quintile_scores(&[0.0, 1.0], true), [1, 3]);
        assert_eq!(quintile_scores(&[0.0, 1.0], false), [3, 1]);
        assert!(quintile_scores(&[], true).is_empty());
    }

    #[test]
    fn names_are_spelt_alike_in_json_and_text() {
        for s in RfmSegment::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
            let back: RfmSegment = serde_json::from_value(s.name().into()).unwrap();
            assert_eq!(back, s);
        }
        let old: RfmSegment = serde_json::from_str("\"AboutToSleep\"").unwrap();
        assert_eq!(old, RfmSegment::AboutToSleep);
    }

    #[test]
    fn every_named_segment_is_reachable() {
        let mut seen: Vec<RfmSegment> = (1..=5)
            .flat_map(|r| (1..=5).map(move |fm| RfmSegment::of(r, fm)))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, RfmSegment::ALL);
        assert_eq!(
            RfmScore { r: 5, f: 5, m: 4 }.segment(),
            RfmSegment::Champions
        );
        assert_eq!(RfmScore { r: 1, f: 1, m: 1 }.segment(), RfmSegment::Lost);
        assert_eq!(
            RfmScore { r: 1, f: 5, m: 5 }.segment(),
            RfmSegment::CantLoseThem
        );
    }
}
