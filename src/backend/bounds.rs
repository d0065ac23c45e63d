//! The values Hamerly's pruned Lloyd step passes to a backend's bounded
//! kernel ([`Resident::bounded_step`](super::Resident::bounded_step)) and
//! gets back. The strategy itself (when to prune, how far bounds move,
//! the running sums and the inertia) is the Lloyd loop's:
//! `kmeans::hamerly`. A backend only runs the per-row work.

use super::Assignment;

/// Relative widening of every bound: several times the rounding error of an
/// f32 distance over a few hundred features, so that rounding never lets a
/// bound claim more than is true.
const SLACK: f32 = 4e-6;

/// Rounds an upper bound up.
pub fn round_up(v: f32) -> f32 {
    v * (1.0 + SLACK)
}

/// Rounds a lower bound down (never below zero).
pub fn round_down(v: f32) -> f32 {
    (v * (1.0 - SLACK)).max(0.0)
}

/// Per row: its cluster, an upper bound `upper` on the distance to that
/// cluster's centroid and a lower bound `lower` on the distance to every
/// other centroid (distances, not squared). Owned by the Lloyd loop and
/// handed to every bounded step; a backend updates it in place.
#[derive(Debug, Clone, PartialEq)]
pub struct RowBounds {
    pub labels: Vec<u32>,
    pub upper: Vec<f32>,
    pub lower: Vec<f32>,
}

impl RowBounds {
    /// Exact bounds from an exhaustive assignment, rounded outwards; the
    /// assignment's buffers become the bounds (no copy).
    pub fn from_assignment(a: Assignment) -> Self {
        use rayon::prelude::*;
        let (mut upper, mut lower) = (a.distances, a.second_distances);
        upper
            .par_iter_mut()
            .zip(lower.par_iter_mut())
            .with_min_len(4096)
            .for_each(|(u, l)| {
                *u = round_up(u.sqrt());
                *l = round_down(l.sqrt());
            });
        Self {
            labels: a.labels,
            upper,
            lower,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What one bounded step needs to know about the centroids, per cluster
/// `c` (all rounded outwards, computed once on the host in `O(k²·d)`):
/// - `moved[c]`: how far centroid `c` moved since the last step (added to
///   the upper bound of its rows);
/// - `shrink[c]`: how far any *other* centroid moved at most (taken from
///   the lower bound of `c`'s rows);
/// - `half_gap[c]`: half the distance from `c` to its nearest other
///   centroid (a row closer than that to `c` cannot be nearer another).
#[derive(Debug, Clone, PartialEq)]
pub struct BoundShifts {
    pub moved: Vec<f32>,
    pub shrink: Vec<f32>,
    pub half_gap: Vec<f32>,
}

impl BoundShifts {
    /// The step's values from the previous and the new centroids, both
    /// `k × d` row-major.
    pub fn between(previous: &[f32], centroids: &[f32], k: usize) -> Self {
        let d = centroids.len() / k.max(1);
        let moved: Vec<f32> = (0..k)
            .map(|c| {
                let row = c * d..(c + 1) * d;
                round_up(distance_f64(&previous[row.clone()], &centroids[row]) as f32)
            })
            .collect();
        // The largest movement, and the largest among the other centroids
        // for the rows of the cluster that moved most.
        let (mut first, mut second, mut argmax) = (0.0f32, 0.0f32, usize::MAX);
        for (c, &m) in moved.iter().enumerate() {
            if m > first {
                (second, first, argmax) = (first, m, c);
            } else if m > second {
                second = m;
            }
        }
        let shrink = (0..k)
            .map(|c| if c == argmax { second } else { first })
            .collect();
        Self {
            moved,
            shrink,
            half_gap: half_gaps(centroids, k, d),
        }
    }
}

/// Half the distance from each centroid to its nearest other centroid
/// (rounded down; +∞ when k = 1).
fn half_gaps(centroids: &[f32], k: usize, d: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let row = |c: usize| &centroids[c * d..(c + 1) * d];
    (0..k)
        .into_par_iter()
        .map(|a| {
            let nearest = (0..k)
                .filter(|&b| b != a)
                .map(|b| distance_f64(row(a), row(b)))
                .fold(f64::INFINITY, f64::min);
            round_down((nearest / 2.0) as f32)
        })
        .collect()
}

fn distance_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_take_the_largest_other_movement() {
        // Centroid 1 moves by 3, centroid 0 by 1, centroid 2 not at all.
        let before = [0.0, 0.0, 10.0, 0.0, 0.0, 10.0];
        let after = [1.0, 0.0, 13.0, 0.0, 0.0, 10.0];
        let s = BoundShifts::between(&before, &after, 3);
        assert!((s.moved[0] - 1.0).abs() < 1e-4 && (s.moved[1] - 3.0).abs() < 1e-4);
        assert_eq!(s.moved[2], 0.0);
        // Rows of 1 lose at most what 0 moved; every other row what 1 moved.
        assert!((s.shrink[1] - 1.0).abs() < 1e-4);
        assert!((s.shrink[0] - 3.0).abs() < 1e-4 && (s.shrink[2] - 3.0).abs() < 1e-4);
        // Nearest to 0 (at (1,0)) is 2 (at (0,10)): √101 / 2.
        assert!((s.half_gap[0] - 101f32.sqrt() / 2.0).abs() < 1e-3);
    }

    #[test]
    fn bounds_are_rounded_outwards() {
        let b = RowBounds::from_assignment(Assignment {
            labels: vec![1],
            distances: vec![4.0],
            second_distances: vec![9.0],
        });
        assert!(b.upper[0] > 2.0 && b.lower[0] < 3.0 && b.lower[0] > 2.99);
        assert_eq!(b.labels, vec![1]);
        assert_eq!(
            BoundShifts::between(&[1.0], &[1.0], 1).half_gap,
            vec![f32::INFINITY]
        );
    }
}
