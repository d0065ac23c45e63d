//! Keeping segment ids stable across refreshes: match new clusters to old
//! ones, then report who moved where.

use std::collections::HashMap;

use ndarray::ArrayView2;
use pathfinding::prelude::{kuhn_munkres_min, Matrix};
use serde::{Deserialize, Serialize};

/// For each new cluster `i`, the old segment id it continues: the matching
/// of new to old centroids (same k, same space) with the least total squared
/// distance (Hungarian algorithm).
pub fn match_segments(old: ArrayView2<f32>, new: ArrayView2<f32>) -> Vec<usize> {
    let k = new.nrows();
    debug_assert_eq!(old.dim(), new.dim());
    // Integer costs for the solver: squared distance in micro-units. Rounding
    // can only swap matchings whose costs differ by less than 1e-6.
    let cost = Matrix::from_fn(k, k, |(i, j)| {
        let d: f64 = new
            .row(i)
            .iter()
            .zip(old.row(j))
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        (d * 1e6).round().min(i64::MAX as f64 / (k as f64 + 1.0)) as i64
    });
    kuhn_munkres_min(&cost).1
}

/// Customers by previous and current segment, plus the ones that arrived
/// or left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transitions {
    /// `counts[old][new]`: customers in both runs.
    pub counts: Vec<Vec<usize>>,
    /// Per current segment: customers not in the previous run.
    pub arrived: Vec<usize>,
    /// Per previous segment: customers not in the current run.
    pub left: Vec<usize>,
}

impl Transitions {
    /// Customers that stayed in their segment over customers in both runs.
    pub fn stayed_fraction(&self) -> f64 {
        let both: usize = self.counts.iter().flatten().sum();
        let stayed: usize = (0..self.counts.len()).map(|i| self.counts[i][i]).sum();
        if both == 0 {
            0.0
        } else {
            stayed as f64 / both as f64
        }
    }
}

/// Size of each segment before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeDrift {
    pub segment: usize,
    pub previous_size: usize,
    pub size: usize,
    pub previous_share: f64,
    pub share: f64,
}

/// Who moved where, by customer id.
pub fn transitions(
    k: usize,
    previous: (&[String], &[u32]),
    current: (&[String], &[u32]),
) -> Transitions {
    let before: HashMap<&str, u32> = previous
        .0
        .iter()
        .map(String::as_str)
        .zip(previous.1.iter().copied())
        .collect();
    let mut counts = vec![vec![0usize; k]; k];
    let mut arrived = vec![0usize; k];
    let mut seen = std::collections::HashSet::with_capacity(current.0.len());
    for (id, &new) in current.0.iter().zip(current.1) {
        seen.insert(id.as_str());
        match before.get(id.as_str()) {
            Some(&old) if (old as usize) < k => counts[old as usize][new as usize] += 1,
            _ => arrived[new as usize] += 1,
        }
    }
    let mut left = vec![0usize; k];
    for (id, &old) in previous.0.iter().zip(previous.1) {
        if !seen.contains(id.as_str()) && (old as usize) < k {
            left[old as usize] += 1;
        }
    }
    Transitions {
        counts,
        arrived,
        left,
    }
}

pub fn size_drift(k: usize, previous: &[u32], current: &[u32]) -> Vec<SizeDrift> {
    let sizes = |labels: &[u32]| {
        let mut s = vec![0usize; k];
        for &l in labels {
            if (l as usize) < k {
                s[l as usize] += 1;
            }
        }
        s
    };
    let (before, after) = (sizes(previous), sizes(current));
    (0..k)
        .map(|segment| SizeDrift {
            segment,
            previous_size: before[segment],
            size: after[segment],
            previous_share: before[segment] as f64 / previous.len().max(1) as f64,
            share: after[segment] as f64 / current.len().max(1) as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matching_undoes_a_permutation() {
        let old = array![[0.0f32, 0.0], [5.0, 5.0], [10.0, 0.0]];
        let new = array![[9.8f32, 0.1], [0.2, -0.1], [5.1, 4.9]];
        assert_eq!(match_segments(old.view(), new.view()), [2, 0, 1]);
    }

    #[test]
    fn transitions_count_movers_arrivals_and_leavers() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let prev = ids(&["a", "b", "c", "d"]);
        let cur = ids(&["a", "b", "c", "e"]);
        let t = transitions(2, (&prev, &[0, 0, 1, 1]), (&cur, &[0, 1, 1, 0]));
        assert_eq!(t.counts, [[1, 1], [0, 1]]);
        assert_eq!(t.arrived, [1, 0]);
        assert_eq!(t.left, [0, 1]);
        assert!((t.stayed_fraction() - 2.0 / 3.0).abs() < 1e-12);
    }
}
