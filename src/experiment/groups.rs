//! Treatment and control groups for a campaign, stratified by segment.
//!
//! Each customer gets a keyed hash of the experiment's salt and their id
//! (SHA-256, so neither the salt nor a customer's group can be guessed from
//! other customers'), read as a number in `[0, 1)`. Within each segment the
//! `round(share · n)` customers with the lowest numbers form the control
//! group: each segment's control share is exact to one customer, and the
//! groups depend only on the salt, the ids and who is in each segment — not
//! on row order. On a refresh with the same salt a customer keeps their
//! group unless their number lies between the old and the new cut of their
//! segment (a few customers near the cut), or they changed segment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A customer's arm of the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Treatment,
    Control,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Control => "control",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "treatment" => Some(Self::Treatment),
            "control" => Some(Self::Control),
            _ => None,
        }
    }
}

/// Why groups could not be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GroupError {
    #[error("the holdout share must be strictly between 0 and 1, got {0}")]
    Share(f64),
    #[error("customer ids and segments differ in length ({ids} and {strata})")]
    Lengths { ids: usize, strata: usize },
}

/// The customer's number in `[0, 1)`: the first 8 bytes of
/// SHA-256(salt ‖ 0 ‖ id), over 2⁶⁴.
pub fn unit(salt: &str, id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Groups for `ids`, stratified by `strata` (a segment per customer): in
/// each stratum, the `round(share · n)` lowest [`unit`] numbers are the
/// control group (ties broken by id).
pub fn assign_groups(
    ids: &[String],
    strata: &[u32],
    share: f64,
    salt: &str,
) -> Result<Vec<Group>, GroupError> {
    if !(share > 0.0 && share < 1.0) {
        return Err(GroupError::Share(share));
    }
    if ids.len() != strata.len() {
        return Err(GroupError::Lengths {
            ids: ids.len(),
            strata: strata.len(),
        });
    }
    let mut members: BTreeMap<u32, Vec<(f64, usize)>> = BTreeMap::new();
    for (i, (id, &s)) in ids.iter().zip(strata).enumerate() {
        members.entry(s).or_default().push((unit(salt, id), i));
    }
    let mut out = vec![Group::Treatment; ids.len()];
    for rows in members.values_mut() {
        rows.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| ids[a.1].cmp(&ids[b.1])));
        let control = (share * rows.len() as f64).round() as usize;
        for &(_, i) in &rows[..control] {
            out[i] = Group::Control;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("C{i:06}")).collect()
    }

    #[test]
    fn shares_are_exact_per_segment_and_order_does_not_matter() {
        let ids = ids(10_001);
        let strata: Vec<u32> = (0..ids.len()).map(|i| (i % 7) as u32).collect();
        let groups = assign_groups(&ids, &strata, 0.1, "spring-sale").unwrap();
        for s in 0..7u32 {
            let n = strata.iter().filter(|&&v| v == s).count();
            let control = (0..ids.len())
                .filter(|&i| strata[i] == s && groups[i] == Group::Control)
                .count();
            assert_eq!(control, (0.1 * n as f64).round() as usize, "segment {s}");
        }
        // Reversed rows: the same group for every customer.
        let (rids, rstrata): (Vec<String>, Vec<u32>) = ids
            .iter()
            .cloned()
            .zip(strata.iter().copied())
            .rev()
            .unzip();
        let reversed = assign_groups(&rids, &rstrata, 0.1, "spring-sale").unwrap();
        for (i, g) in reversed.iter().rev().enumerate() {
            assert_eq!(*g, groups[i]);
        }
        // Another salt: another draw.
        let other = assign_groups(&ids, &strata, 0.1, "summer").unwrap();
        assert_ne!(other, groups);
    }

    #[test]
    fn a_refresh_moves_only_customers_near_the_cut() {
        let all = ids(20_000);
        let strata = vec![0u32; all.len()];
        let before = assign_groups(&all, &strata, 0.2, "s").unwrap();
        // 500 customers leave, 500 arrive.
        let mut now: Vec<String> = all[500..].to_vec();
        now.extend((0..500).map(|i| format!("N{i:06}")));
        let after = assign_groups(&now, &vec![0; now.len()], 0.2, "s").unwrap();
        let moved = (0..19_500).filter(|&i| before[i + 500] != after[i]).count();
        assert!(
            moved < 100,
            "{moved} of 19,500 returning customers changed group"
        );
    }

    #[test]
    fn bad_shares_are_refused() {
        assert_eq!(
            assign_groups(&ids(3), &[0, 0, 0], 1.0, "s"),
            Err(GroupError::Share(1.0))
        );
        assert!(assign_groups(&ids(3), &[0, 0], 0.5, "s").is_err());
    }
}
