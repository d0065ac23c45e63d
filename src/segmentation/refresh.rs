//! Keeping segment ids stable across refreshes: match new clusters to old
//! ones, then report who moved where.

use std::collections::HashMap;

use ndarray::ArrayView2;
use pathfinding::prelude::{kuhn_munkres, kuhn_munkres_min, Matrix};
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

/// How a refresh carried segment ids over: which current cluster continues
/// which previous segment, and what split, merged, appeared or retired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdCarry {
    /// Per current cluster (centroid row): its segment id.
    pub ids: Vec<u32>,
    /// The next id a new segment gets; ids are never reused.
    pub next_id: u32,
    pub changes: Vec<SegmentChange>,
}

/// What happened to the segments between two runs. Shares are of the
/// customers present in both runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SegmentChange {
    /// A previous segment whose customers now mostly sit in several segments.
    Split { from: u32, into: Vec<u32> },
    /// A current segment made mostly of several previous segments.
    Merged { into: u32, from: Vec<u32> },
    /// A segment with no previous group behind it: a new id.
    New { id: u32 },
    /// A previous segment no current segment continues.
    Retired { id: u32 },
}

/// A pair continues a segment when more than this share of each side's
/// customers (those in both runs) are the same customers: a majority.
const SAME_GROUP: f64 = 0.5;
/// A part holding this share of a segment's customers counts in a split or
/// merge. Of all its customers, arrivals and leavers included: a segment of
/// 3,000 new customers and 6 returning ones is new, not a merge of the
/// segments those 6 came from.
const NOTABLE_PART: f64 = 0.25;

/// Carries segment ids from the previous run to the current clusters by the
/// customers they share: the one-to-one matching with the most shared
/// customers (Hungarian algorithm), kept only where the pair is the same
/// group ([`SAME_GROUP`]); every other current cluster gets a new id.
///
/// `t.counts[o][n]`: customers in previous cluster `o` and current cluster
/// `n`; `t.arrived` and `t.left` weigh splits and merges ([`NOTABLE_PART`]).
pub fn carry_ids(t: &Transitions, previous_ids: &[u32], next_id: u32) -> IdCarry {
    let overlap = &t.counts;
    let (k_old, k_new) = (overlap.len(), overlap.first().map_or(0, Vec::len));
    let rows: Vec<usize> = overlap.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<usize> = (0..k_new)
        .map(|n| overlap.iter().map(|r| r[n]).sum())
        .collect();
    let old_size = |o: usize| rows[o] + t.left.get(o).copied().unwrap_or(0);
    let new_size = |n: usize| cols[n] + t.arrived.get(n).copied().unwrap_or(0);
    let mut ids = vec![u32::MAX; k_new];
    if k_old > 0 && k_new > 0 {
        // kuhn_munkres needs rows ≤ columns: match from the smaller side.
        let (small, large) = (k_old.min(k_new), k_old.max(k_new));
        let at = |i: usize, j: usize| {
            if k_old <= k_new {
                overlap[i][j]
            } else {
                overlap[j][i]
            }
        };
        let weights = Matrix::from_fn(small, large, |(i, j)| at(i, j) as i64);
        let (_, assignment) = kuhn_munkres(&weights);
        for (i, &j) in assignment.iter().enumerate() {
            let (o, n) = if k_old <= k_new { (i, j) } else { (j, i) };
            let shared = overlap[o][n] as f64;
            if shared > SAME_GROUP * rows[o] as f64 && shared > SAME_GROUP * cols[n] as f64 {
                ids[n] = previous_ids[o];
            }
        }
    }
    let mut next = next_id.max(previous_ids.iter().map(|&i| i + 1).max().unwrap_or(0));
    let mut changes = Vec::new();
    for id in ids.iter_mut().filter(|id| **id == u32::MAX) {
        *id = next;
        changes.push(SegmentChange::New { id: next });
        next += 1;
    }
    for (o, &old_id) in previous_ids.iter().enumerate() {
        let into: Vec<u32> = (0..k_new)
            .filter(|&n| rows[o] > 0 && overlap[o][n] as f64 >= NOTABLE_PART * old_size(o) as f64)
            .map(|n| ids[n])
            .collect();
        if into.len() > 1 {
            changes.push(SegmentChange::Split { from: old_id, into });
        }
        if !ids.contains(&old_id) {
            changes.push(SegmentChange::Retired { id: old_id });
        }
    }
    for n in 0..k_new {
        let from: Vec<u32> = (0..k_old)
            .filter(|&o| cols[n] > 0 && overlap[o][n] as f64 >= NOTABLE_PART * new_size(n) as f64)
            .map(|o| previous_ids[o])
            .collect();
        if from.len() > 1 {
            changes.push(SegmentChange::Merged { into: ids[n], from });
        }
    }
    IdCarry {
        ids,
        next_id: next,
        changes,
    }
}

/// Customers by previous and current segment, plus the ones that arrived
/// or left. Rows and columns follow `previous_ids` and `ids`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transitions {
    /// Segment id of each row of `counts`, and of `left`.
    #[serde(default)]
    pub previous_ids: Vec<u32>,
    /// Segment id of each column of `counts`, and of `arrived`.
    #[serde(default)]
    pub ids: Vec<u32>,
    /// `counts[old][new]`: customers in both runs.
    pub counts: Vec<Vec<usize>>,
    /// Per current segment: customers not in the previous run.
    pub arrived: Vec<usize>,
    /// Per previous segment: customers not in the current run.
    pub left: Vec<usize>,
}

impl Transitions {
    /// Customers in both runs.
    pub fn returning(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    /// Returning customers whose segment id is the same as before.
    pub fn stayed(&self) -> usize {
        let id = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(i as u32);
        self.counts
            .iter()
            .enumerate()
            .flat_map(|(o, row)| row.iter().enumerate().map(move |(n, &c)| (o, n, c)))
            .filter(|&(o, n, _)| id(&self.previous_ids, o) == id(&self.ids, n))
            .map(|(_, _, c)| c)
            .sum()
    }

    /// [`Self::stayed`] over [`Self::returning`] (0 when nobody returned).
    pub fn stayed_fraction(&self) -> f64 {
        match self.returning() {
            0 => 0.0,
            both => self.stayed() as f64 / both as f64,
        }
    }
}

/// The refresh in words: how many returning customers kept their segment
/// (counted, never assumed) and what split, merged, appeared or retired.
pub fn kept_sentence(r: &super::Refresh) -> String {
    let t = &r.transitions;
    let (stayed, both) = (t.stayed(), t.returning());
    let mut out = format!(
        "{stayed} of {both} returning customers ({:.2} %) kept their segment; {} moved",
        100.0 * t.stayed_fraction(),
        both - stayed
    );
    let arrived: usize = t.arrived.iter().sum();
    let left: usize = t.left.iter().sum();
    out.push_str(&format!("; {arrived} new customers, {left} gone"));
    for c in &r.changes {
        let list = |v: &[u32]| {
            v.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        };
        out.push_str(&match c {
            SegmentChange::Split { from, into } => {
                format!("; segment {from} split into {}", list(into))
            }
            SegmentChange::Merged { into, from } => format!("; {} merged into {into}", list(from)),
            SegmentChange::New { id } => {
                format!("; segment {id} is new (no previous group matches it)")
            }
            SegmentChange::Retired { id } => format!("; segment {id} retired"),
        });
    }
    out
}

/// Size of a current segment before (under the same id) and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeDrift {
    pub segment: usize,
    pub previous_size: usize,
    pub size: usize,
    pub previous_share: f64,
    pub share: f64,
}

/// Who moved where, by customer id: previous labels index `previous_ids`,
/// current labels index `ids`.
pub fn transitions(
    (previous_ids, ids): (&[u32], &[u32]),
    previous: (&[String], &[u32]),
    current: (&[String], &[u32]),
) -> Transitions {
    let (k_old, k_new) = (previous_ids.len(), ids.len());
    let before: HashMap<&str, u32> = previous
        .0
        .iter()
        .map(String::as_str)
        .zip(previous.1.iter().copied())
        .collect();
    let mut counts = vec![vec![0usize; k_new]; k_old];
    let mut arrived = vec![0usize; k_new];
    let mut seen = std::collections::HashSet::with_capacity(current.0.len());
    for (id, &new) in current.0.iter().zip(current.1) {
        seen.insert(id.as_str());
        match before.get(id.as_str()) {
            Some(&old) if (old as usize) < k_old => counts[old as usize][new as usize] += 1,
            _ => arrived[new as usize] += 1,
        }
    }
    let mut left = vec![0usize; k_old];
    for (id, &old) in previous.0.iter().zip(previous.1) {
        if !seen.contains(id.as_str()) && (old as usize) < k_old {
            left[old as usize] += 1;
        }
    }
    Transitions {
        previous_ids: previous_ids.to_vec(),
        ids: ids.to_vec(),
        counts,
        arrived,
        left,
    }
}

/// Per current segment: its size, and the size its id had before (0 for a
/// new segment).
pub fn size_drift(
    (previous_ids, ids): (&[u32], &[u32]),
    previous: &[u32],
    current: &[u32],
) -> Vec<SizeDrift> {
    let sizes = |labels: &[u32], k: usize| {
        let mut s = vec![0usize; k];
        for &l in labels {
            if (l as usize) < k {
                s[l as usize] += 1;
            }
        }
        s
    };
    let (before, after) = (
        sizes(previous, previous_ids.len()),
        sizes(current, ids.len()),
    );
    ids.iter()
        .enumerate()
        .map(|(c, &id)| {
            let previous_size = previous_ids
                .iter()
                .position(|&p| p == id)
                .map_or(0, |o| before[o]);
            SizeDrift {
                segment: id as usize,
                previous_size,
                size: after[c],
                previous_share: previous_size as f64 / previous.len().max(1) as f64,
                share: after[c] as f64 / current.len().max(1) as f64,
            }
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

    /// Transitions with nobody arriving or leaving.
    fn closed(counts: &[Vec<usize>]) -> Transitions {
        Transitions {
            previous_ids: Vec::new(),
            ids: Vec::new(),
            counts: counts.to_vec(),
            arrived: vec![0; counts.first().map_or(0, Vec::len)],
            left: vec![0; counts.len()],
        }
    }

    #[test]
    fn ids_follow_the_customers_and_new_groups_get_new_ids() {
        // Clusters swapped places: ids follow the customers.
        let c = carry_ids(&closed(&[vec![2, 95], vec![90, 3]]), &[0, 1], 2);
        assert_eq!(c.ids, [1, 0]);
        assert!(c.changes.is_empty(), "{:?}", c.changes);
        // Old 3 split 55/45; old 5 and 7 merged, 7 the majority of the merge.
        let overlap = [vec![55, 45, 0], vec![0, 0, 40], vec![0, 0, 45]];
        let c = carry_ids(&closed(&overlap), &[3, 5, 7], 8);
        assert_eq!(
            c.ids,
            [3, 8, 7],
            "the larger half and the merge's majority keep ids"
        );
        assert!(c.changes.contains(&SegmentChange::Split {
            from: 3,
            into: vec![3, 8]
        }));
        assert!(c.changes.contains(&SegmentChange::Merged {
            into: 7,
            from: vec![5, 7]
        }));
        assert!(c.changes.contains(&SegmentChange::Retired { id: 5 }));
        assert!(c.changes.contains(&SegmentChange::New { id: 8 }));
        assert_eq!(c.changes.len(), 4, "{:?}", c.changes);
        assert_eq!(c.next_id, 9);
        // A cluster that is no group's majority gets a new id.
        let c = carry_ids(&closed(&[vec![30, 30], vec![30, 30]]), &[0, 1], 2);
        assert_eq!(c.ids, [2, 3]);
        // Ids are never reused: a retired id stays retired.
        let c = carry_ids(&closed(&[vec![0, 10], vec![10, 0]]), &[0, 2], 3);
        assert_eq!(c.ids, [2, 0]);
    }

    #[test]
    fn arrivals_and_leavers_weigh_splits_and_merges() {
        // Current 2 is 3,000 new customers and 6 returning ones, 4 from old
        // 0 and 2 from old 1: new, not a merge of 0 and 1.
        let mut t = closed(&[vec![900, 0, 4], vec![0, 800, 2]]);
        t.arrived = vec![100, 100, 3000];
        let c = carry_ids(&t, &[0, 1], 2);
        assert_eq!(c.ids, [0, 1, 2]);
        assert_eq!(c.changes, [SegmentChange::New { id: 2 }]);
        // The same 6 in a segment of 8 (2 arrivals) are a merge.
        t.arrived = vec![100, 100, 2];
        let c = carry_ids(&t, &[0, 1], 2);
        assert!(c.changes.contains(&SegmentChange::Merged {
            into: 2,
            from: vec![0, 1]
        }));
        // Old 0 split 300/300 of its 2,400 (1,800 left): not a split.
        let mut t = closed(&[vec![300, 300], vec![0, 500]]);
        t.left = vec![1800, 0];
        let c = carry_ids(&t, &[0, 1], 2);
        assert!(
            !c.changes
                .iter()
                .any(|c| matches!(c, SegmentChange::Split { .. })),
            "{:?}",
            c.changes
        );
        t.left = vec![0, 0];
        let c = carry_ids(&t, &[0, 1], 2);
        assert!(c
            .changes
            .iter()
            .any(|c| matches!(c, SegmentChange::Split { from: 0, .. })));
    }

    #[test]
    fn transitions_count_movers_arrivals_and_leavers() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let prev = ids(&["a", "b", "c", "d"]);
        let cur = ids(&["a", "b", "c", "e"]);
        let t = transitions(
            (&[0, 1], &[0, 1]),
            (&prev, &[0, 0, 1, 1]),
            (&cur, &[0, 1, 1, 0]),
        );
        assert_eq!(t.counts, [[1, 1], [0, 1]]);
        assert_eq!(t.arrived, [1, 0]);
        assert_eq!(t.left, [0, 1]);
        assert!((t.stayed_fraction() - 2.0 / 3.0).abs() < 1e-12);
    }
}
