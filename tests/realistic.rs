//! Segments a marketer can act on, on logs shaped like real shops (a single
//! cohort; a long-running shop with seasonality and heavy-tailed spend):
//! the recommended k has no tiny segment, and every word of every
//! description is true of the segment's medians.

mod common;

use segmenta::backend::cpu::CpuBackend;
use segmenta::segmentation::features::{FEATURE_NAMES, FREQUENCY, MONETARY, RECENCY, TENURE};
use segmenta::segmentation::profile::{LAPSED_DAYS, LONG_STANDING_DAYS, NEW_DAYS, RECENT_DAYS};
use segmenta::segmentation::transactions::TransactionColumns;
use segmenta::segmentation::{run_segmentation, SegmentControl, SegmentParams, SegmentRun};
use tempfile::TempDir;

fn params() -> SegmentParams {
    SegmentParams {
        columns: TransactionColumns {
            order: Some("order_id".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn base_median(run: &SegmentRun, j: usize) -> f64 {
    let mut v: Vec<f64> = run.customers.values.column(j).to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Every word of every description against the segment's medians.
fn descriptions_are_true(run: &SegmentRun) {
    for p in &run.profiles {
        let median = |j: usize| p.features[j].median;
        let has = |w: &str| p.description.split(", ").any(|d| d == w);
        let what = format!(
            "segment {} {:?}: medians {:?}",
            p.id,
            p.description,
            (0..5).map(median).collect::<Vec<_>>()
        );
        if has("new") {
            assert!(median(TENURE) <= NEW_DAYS, "{what}");
        }
        if has("long-standing") {
            assert!(median(TENURE) >= LONG_STANDING_DAYS, "{what}");
        }
        if has("recent") {
            assert!(median(RECENCY) <= RECENT_DAYS, "{what}");
        }
        if has("lapsed") {
            assert!(median(RECENCY) >= LAPSED_DAYS, "{what}");
        }
        if has("one-time buyers") {
            assert_eq!(median(FREQUENCY), 1.0, "{what}");
        }
        if has("frequent") {
            assert!(median(FREQUENCY) > base_median(run, FREQUENCY), "{what}");
        }
        if has("infrequent") {
            assert!(median(FREQUENCY) < base_median(run, FREQUENCY), "{what}");
        }
        if has("high spend") {
            assert!(median(MONETARY) > base_median(run, MONETARY), "{what}");
        }
        if has("low spend") {
            assert!(median(MONETARY) < base_median(run, MONETARY), "{what}");
        }
    }
}

/// With `SEGMENTA_TEST_OUT=DIR`, the run's report goes to `DIR/name`, to
/// look at.
fn keep(run: &SegmentRun, name: &str) {
    if let Ok(dir) = std::env::var("SEGMENTA_TEST_OUT") {
        segmenta::segmentation::write_outputs(run, &std::path::Path::new(&dir).join(name)).unwrap();
    }
}

fn actionable(run: &SegmentRun) {
    let sweep = run.sweep.as_ref().expect("k was chosen");
    let k = sweep.recommended_k;
    assert!((3..=8).contains(&k), "k = {k}");
    let chosen = sweep.scores.iter().find(|s| s.k == k).unwrap();
    assert!(chosen.eligible, "{}", sweep.reason);
    for p in &run.profiles {
        assert!(
            p.share >= 0.05,
            "segment {} holds {:.1} %: {}",
            p.id,
            p.share * 100.0,
            sweep.reason
        );
    }
    assert!(
        sweep.reason.starts_with(&format!("k = {k}: ")),
        "{}",
        sweep.reason
    );
    descriptions_are_true(run);
    // Segments a team can tell apart: no two share a description.
    let mut names: Vec<&str> = run
        .profiles
        .iter()
        .map(|p| p.description.as_str())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), run.profiles.len(), "{names:?}");
}

#[test]
fn a_single_cohort_gets_segments_by_behaviour_not_by_first_month() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("cohort.csv");
    common::logs::single_cohort(&path, 8_000, 1);
    let run = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params(),
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    keep(&run, "cohort");
    actionable(&run);
    // Tenure spans three months in a year-old cohort: it is left out of
    // the clustering and earns no word.
    assert!(
        run.feature_choice
            .left_out
            .iter()
            .any(|(f, _)| f == FEATURE_NAMES[TENURE]),
        "{:?}",
        run.feature_choice
    );
    for p in &run.profiles {
        assert!(
            !p.description.contains("new") && !p.description.contains("long-standing"),
            "{}",
            p.description
        );
    }
    // One-time buyers are a third of this base: they are found as such.
    assert!(run
        .profiles
        .iter()
        .any(|p| p.description.contains("one-time buyers")));
}

#[test]
fn a_long_running_seasonal_shop_with_heavy_tailed_spend() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("shop.csv");
    common::logs::long_running_shop(&path, 8_000, 2);
    let run = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params(),
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    keep(&run, "shop");
    actionable(&run);
    assert!(
        run.feature_choice.left_out.is_empty(),
        "{:?}",
        run.feature_choice
    );
    // Spend is heavy-tailed: some segment is the high spenders.
    assert!(run
        .profiles
        .iter()
        .any(|p| p.description.contains("high spend")));
}
