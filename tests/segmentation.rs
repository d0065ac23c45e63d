//! The customer segmentation workflow: RFM features against hand-computed
//! cases, bad rows, recovery of the demo's planted groups, stable refreshes,
//! valid report files, and GPU/CPU agreement.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use segmenta::backend::cpu::CpuBackend;
use segmenta::kmeans::adjusted_rand_index;
use segmenta::segmentation::demo::{write_demo_log, PlantedGroup};
use segmenta::segmentation::features::{customer_features, FrequencyBasis, FEATURE_NAMES};
use segmenta::segmentation::transactions::{read_transactions, BadRowPolicy, TransactionColumns};
use segmenta::segmentation::{
    run_segmentation, write_outputs, KChoice, RowProblem, SegmentControl, SegmentModel,
    SegmentParams, SegmentRun, SegmentationError,
};
use segmenta::Error;
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

/// Features by customer id, as `[recency, frequency, monetary, aov, tenure]`.
fn features_by_id(
    path: &Path,
    columns: &TransactionColumns,
    as_of: Option<NaiveDate>,
) -> (
    HashMap<String, Vec<f64>>,
    segmenta::segmentation::features::CustomerFeatures,
) {
    let log = read_transactions(path, columns, BadRowPolicy::Reject).unwrap();
    let f = customer_features(&log, as_of).unwrap();
    let map = f
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), f.values.row(i).to_vec()))
        .collect();
    (map, f)
}

const LOG: &str = "\
customer_id,order_id,date,amount
a,o1,2024-01-01,10.00
a,o1,2024-01-01,5.00
a,o2,2024-01-01,20.00
a,o3,2024-01-10T18:30:00Z,30.00
a,o3,2024-01-12,-15.00
b,o4,2024-01-05 09:00:00,100
c,o5,2024-01-02,-40
d,o6,2024-01-08,0
";

#[test]
fn rfm_features_match_hand_computed_values() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "log.csv", LOG);
    // Without order ids frequency counts purchase days: a bought on the 1st
    // and the 10th. The as-of date defaults to the day after the last line
    // (2024-01-13). Monetary is net of a's refund: 10 + 5 + 20 + 30 − 15.
    let (f, all) = features_by_id(&path, &TransactionColumns::default(), None);
    assert_eq!(all.as_of, date("2024-01-13"));
    assert_eq!(all.frequency_basis, FrequencyBasis::PurchaseDays);
    assert_eq!(f["a"], [3.0, 2.0, 50.0, 25.0, 12.0]);
    assert_eq!(f["b"], [8.0, 1.0, 100.0, 100.0, 8.0]);
    // A zero-amount line is a purchase; a refund-only customer is left out.
    assert_eq!(f["d"], [5.0, 1.0, 0.0, 0.0, 5.0]);
    assert!(!f.contains_key("c"));
    assert_eq!(all.notes.customers_without_purchase, 1);
    assert_eq!(all.notes.refund_lines, 2);
    assert_eq!(all.ids, ["a", "b", "d"], "first-appearance order");

    // With order ids, a has three orders (o1, o2, o3).
    let orders = TransactionColumns {
        order: Some("order_id".into()),
        ..Default::default()
    };
    let (f, all) = features_by_id(&path, &orders, None);
    assert_eq!(all.frequency_basis, FrequencyBasis::Orders);
    assert_eq!(f["a"][1], 3.0);
    assert!((f["a"][3] - 50.0 / 3.0).abs() < 1e-5);

    // An earlier as-of date ignores later lines: on 2024-01-05 a has only
    // the 1st (35 spent), b's purchase that day counts with recency 0.
    let (f, all) = features_by_id(&path, &orders, Some(date("2024-01-05")));
    assert_eq!(f["a"], [4.0, 2.0, 35.0, 17.5, 4.0]);
    assert_eq!(f["b"], [0.0, 1.0, 100.0, 100.0, 0.0]);
    assert_eq!(all.notes.lines_after_as_of, 3);
}

#[test]
fn quantity_turns_amount_into_a_unit_price_and_returns_are_refunds() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "retail.csv",
        "cust,when,price,qty\nx,2024-02-01,2.5,4\nx,2024-02-03,2.5,-2\n",
    );
    let columns = TransactionColumns {
        customer: "cust".into(),
        date: "when".into(),
        amount: "price".into(),
        quantity: Some("qty".into()),
        order: None,
    };
    let (f, _) = features_by_id(&path, &columns, None);
    assert_eq!(f["x"], [3.0, 1.0, 5.0, 5.0, 3.0]);
}

/// One row with each problem, after a good one.
const BAD: &str = "\
customer_id,date,amount,quantity
ok,2024-01-01,10,1
,2024-01-02,10,1
bad-date,2024-02-30,10,1
bad-amount,2024-01-03,ten,1
bad-quantity,2024-01-03,10,lots
inf,2024-01-03,inf,1
";

#[test]
fn bad_rows_are_counted_when_skipped() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "bad.csv", BAD);
    let columns = TransactionColumns {
        quantity: Some("quantity".into()),
        ..Default::default()
    };
    let log = read_transactions(&path, &columns, BadRowPolicy::Skip).unwrap();
    assert_eq!(log.rows_read, 6);
    assert_eq!(log.lines.len(), 1);
    let b = &log.bad_rows;
    assert_eq!(b.total, 5);
    assert_eq!(b.by_problem[&RowProblem::MissingCustomerId], 1);
    assert_eq!(b.by_problem[&RowProblem::BadDate], 1);
    assert_eq!(b.by_problem[&RowProblem::BadAmount], 2, "text and infinity");
    assert_eq!(b.by_problem[&RowProblem::BadQuantity], 1);
    let e = &b.examples;
    assert_eq!(
        (e[0].row, &e[0].problem),
        (2, &RowProblem::MissingCustomerId)
    );
    assert_eq!((e[3].row, &e[3].problem), (5, &RowProblem::BadQuantity));
    assert_eq!(
        (e[3].column.as_str(), e[3].value.as_str()),
        ("quantity", "lots")
    );
}

/// A field that is not UTF-8 (a Latin-1 pound sign) is one bad row,
/// counted with the fix, not the end of the read; other rows are kept.
#[test]
fn a_field_that_is_not_utf8_is_one_bad_row() {
    let dir = TempDir::new().unwrap();
    let mut bytes = b"customer_id,date,amount\nA,2024-01-01,10\nB,2024-01-02,12 ".to_vec();
    bytes.push(0xa3);
    bytes.extend_from_slice(b"\nC,2024-01-03,7\n");
    let path = dir.path().join("latin1.csv");
    std::fs::write(&path, bytes).unwrap();
    let columns = TransactionColumns::default();
    let log = read_transactions(&path, &columns, BadRowPolicy::Skip).unwrap();
    assert_eq!((log.rows_read, log.lines.len()), (3, 2));
    let b = &log.bad_rows;
    assert_eq!(b.by_problem[&RowProblem::NotUtf8], 1);
    let e = &b.examples[0];
    assert_eq!((e.row, e.column.as_str()), (2, "amount"));
    assert!(e.fix.as_deref().unwrap().contains("save the file as UTF-8"));
    let e = read_transactions(&path, &columns, BadRowPolicy::Reject).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("row 2: text that is not UTF-8 (column \"amount\""),
        "{e}"
    );
}

#[test]
fn each_bad_row_is_rejected_with_its_row_number() {
    let dir = TempDir::new().unwrap();
    let columns = TransactionColumns {
        quantity: Some("quantity".into()),
        ..Default::default()
    };
    let cases = [
        (
            ",2024-01-02,10,1",
            RowProblem::MissingCustomerId,
            "customer_id",
        ),
        ("x,2024-02-30,10,1", RowProblem::BadDate, "date"),
        ("x,2024-01-03,ten,1", RowProblem::BadAmount, "amount"),
        // Digits inside a word are not an amount (a refund of 17 here).
        ("x,2024-01-03,ABC-17,1", RowProblem::BadAmount, "amount"),
        ("x,2024-01-03,12 apples,1", RowProblem::BadAmount, "amount"),
        ("x,2024-01-03,10,lots", RowProblem::BadQuantity, "quantity"),
    ];
    for (line, problem, column) in cases {
        let text = format!("customer_id,date,amount,quantity\nok,2024-01-01,10,1\n{line}\n");
        let path = write(&dir, "one.csv", &text);
        match read_transactions(&path, &columns, BadRowPolicy::Reject) {
            Err(Error::Segmentation(e @ SegmentationError::BadRow { .. })) => {
                let SegmentationError::BadRow {
                    row,
                    problem: p,
                    column: c,
                    ..
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!((*row, p, c.as_str()), (2, &problem, column), "{line}");
                assert!(e.to_string().starts_with("row 2: "), "{e}");
            }
            other => panic!("{line}: expected a bad-row error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_columns_and_empty_logs_are_clear_errors() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "log.csv", LOG);
    let columns = TransactionColumns {
        customer: "client".into(),
        ..Default::default()
    };
    let e = read_transactions(&path, &columns, BadRowPolicy::Skip).unwrap_err();
    assert!(e.to_string().contains("unknown column \"client\""), "{e}");
    let empty = write(&dir, "empty.csv", "customer_id,date,amount\n");
    let log =
        read_transactions(&empty, &TransactionColumns::default(), BadRowPolicy::Skip).unwrap();
    let e = customer_features(&log, None).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Segmentation(SegmentationError::NoCustomers { .. })
        ),
        "{e}"
    );
}

#[test]
fn parquet_logs_with_typed_dates_read_like_csv() {
    use arrow_array::{ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray};
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("log.parquet");
    let day = |s: &str| (date(s) - date("1970-01-01")).num_days() as i32;
    let batch = RecordBatch::try_from_iter([
        (
            "customer_id",
            Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])) as ArrayRef,
        ),
        (
            "date",
            Arc::new(Date32Array::from(vec![
                day("2024-01-01"),
                day("2024-01-11"),
                day("2024-01-11"),
            ])) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![10.0, 30.0, 5.0])) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let log = read_transactions(&path, &TransactionColumns::default(), BadRowPolicy::Skip).unwrap();
    assert_eq!(
        log.bad_rows.by_problem[&RowProblem::MissingCustomerId],
        1,
        "a null id"
    );
    let f = customer_features(&log, None).unwrap();
    assert_eq!(f.values.row(0).to_vec(), [1.0, 2.0, 40.0, 20.0, 11.0]);
}

/// A small demo log and a segment run over it.
fn demo_run(dir: &TempDir, customers: usize, params: &SegmentParams) -> (SegmentRun, Vec<u32>) {
    let path = dir.path().join("transactions.csv");
    let demo = write_demo_log(&path, customers, 7).unwrap();
    let run = run_segmentation(
        &CpuBackend::new(),
        &path,
        &demo_params(params),
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    let group: HashMap<&str, u32> = demo
        .customer_ids
        .iter()
        .map(String::as_str)
        .zip(
            demo.groups
                .iter()
                .map(|g| PlantedGroup::ALL.iter().position(|p| p == g).unwrap() as u32),
        )
        .collect();
    let truth = run
        .customers
        .ids
        .iter()
        .map(|id| group[id.as_str()])
        .collect();
    (run, truth)
}

fn demo_params(p: &SegmentParams) -> SegmentParams {
    SegmentParams {
        columns: TransactionColumns {
            order: Some("order_id".into()),
            ..Default::default()
        },
        ..p.clone()
    }
}

#[test]
fn the_demo_planted_groups_are_recovered_with_the_recommended_k() {
    // 20,000 customers (the demo uses 100,000; the recovery is the same
    // there — see the closing note — but the test stays quick).
    let dir = TempDir::new().unwrap();
    let (run, truth) = demo_run(&dir, 20_000, &SegmentParams::default());
    let sweep = run.sweep.as_ref().expect("a k range was swept");
    assert_eq!(sweep.scores.len(), 6, "k = 3..=8");
    assert_eq!(sweep.recommended_k, PlantedGroup::ALL.len());
    let chosen = &sweep.scores[sweep.recommended_k - 3];
    assert!(
        chosen.eligible && chosen.stability >= 0.75 && chosen.min_share >= 0.05,
        "{chosen:?}"
    );
    assert!(
        sweep.reason.starts_with("k = 5: the highest silhouette"),
        "{}",
        sweep.reason
    );
    let ari = adjusted_rand_index(&truth, &run.prediction.labels);
    assert!(ari >= 0.98, "adjusted Rand index {ari}");
    // The log's unreadable rows were skipped and reported, not fatal.
    assert!(run.input.bad_rows.total > 0);
    // Profiles add up and use original units.
    let sizes: usize = run.profiles.iter().map(|p| p.size).sum();
    assert_eq!(sizes, run.customers.ids.len());
    let champions = run
        .profiles
        .iter()
        .max_by(|a, b| a.features[2].mean.total_cmp(&b.features[2].mean))
        .unwrap();
    assert!(
        champions.description.contains("high spend"),
        "{}",
        champions.description
    );
    assert!(champions.features[2].lift > 2.0);
    // The stored preprocessing takes logs of the skewed spend features.
    let log1p = &run.model.kmeans.scaler().log1p;
    assert!(
        log1p[2] && log1p[3],
        "monetary and AOV are skewed: {log1p:?}"
    );
}

#[test]
fn a_refresh_on_unchanged_data_keeps_every_id() {
    let dir = TempDir::new().unwrap();
    let fixed = SegmentParams {
        k: Some(KChoice::Fixed(5)),
        ..SegmentParams::default()
    };
    let (first, _) = demo_run(&dir, 5_000, &fixed);
    let path = dir.path().join("transactions.csv");
    let params = demo_params(&SegmentParams::default());
    // The previous model goes through its file format, as on the CLI.
    let files = write_outputs(&first, &dir.path().join("out")).unwrap();
    let previous = SegmentModel::load(&files.model_json).unwrap();
    let again = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params,
        Some(&previous),
        &SegmentControl::default(),
    )
    .unwrap();
    assert_eq!(again.prediction.labels, first.prediction.labels);
    let r = again.refresh.as_ref().unwrap();
    for (i, row) in r.transitions.counts.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            assert_eq!(
                c > 0,
                i == j && first.profiles[i].size > 0,
                "counts[{i}][{j}] = {c}"
            );
        }
    }
    assert!(r.transitions.arrived.iter().all(|&a| a == 0));
    assert!(r.transitions.left.iter().all(|&l| l == 0));
    assert_eq!(r.transitions.stayed_fraction(), 1.0);
    assert!(r.size_drift.iter().all(|d| d.size == d.previous_size));

    // Renumber the previous model's segments: the refresh must follow the
    // old ids, not the order the new fit happens to produce.
    let mut shuffled = previous.clone();
    let new_id = [3, 0, 4, 1, 2];
    shuffled.kmeans.renumber(&new_id);
    shuffled
        .labels
        .iter_mut()
        .for_each(|l| *l = new_id[*l as usize] as u32);
    let follow = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params,
        Some(&shuffled),
        &SegmentControl::default(),
    )
    .unwrap();
    assert_eq!(follow.prediction.labels, shuffled.labels);

    // A refresh cannot silently change k.
    let other_k = demo_params(&SegmentParams {
        k: Some(KChoice::Fixed(4)),
        ..SegmentParams::default()
    });
    let e = run_segmentation(
        &CpuBackend::new(),
        &path,
        &other_k,
        Some(&previous),
        &SegmentControl::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Segmentation(SegmentationError::KMismatch {
                previous: 5,
                requested: 4
            })
        ),
        "{e}"
    );

    // Nor its features; the same ones in another order are the same.
    let features = |names: &[&str]| {
        demo_params(&SegmentParams {
            features: Some(names.iter().map(|s| s.to_string()).collect()),
            ..SegmentParams::default()
        })
    };
    let refresh = |params: &SegmentParams| {
        run_segmentation(
            &CpuBackend::new(),
            &path,
            params,
            Some(&previous),
            &SegmentControl::default(),
        )
    };
    let e = refresh(&features(&["recency_days", "frequency"])).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Segmentation(SegmentationError::FeaturesMismatch { requested, .. })
                if requested == "recency_days, frequency"
        ),
        "{e}"
    );
    let mut same: Vec<&str> = previous.features.iter().map(String::as_str).collect();
    same.reverse();
    refresh(&features(&same)).unwrap();

    // A model without its customers (exported for scoring) cannot seed a
    // refresh: every segment would look new.
    let mut scoring_only = previous.clone();
    scoring_only.customer_ids.clear();
    scoring_only.labels.clear();
    let e = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params,
        Some(&scoring_only),
        &SegmentControl::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Segmentation(SegmentationError::PreviousWithoutCustomers)
        ),
        "{e}"
    );
}

#[test]
fn a_refresh_on_a_newer_log_reports_movers_and_new_customers() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("transactions.csv");
    write_demo_log(&path, 4_000, 11).unwrap();
    let fixed = demo_params(&SegmentParams {
        k: Some(KChoice::Fixed(5)),
        as_of: Some(date("2025-07-01")),
        ..SegmentParams::default()
    });
    let cpu = CpuBackend::new();
    let old = run_segmentation(&cpu, &path, &fixed, None, &SegmentControl::default()).unwrap();
    let newer = demo_params(&SegmentParams::default());
    let new = run_segmentation(
        &cpu,
        &path,
        &newer,
        Some(&old.model),
        &SegmentControl::default(),
    )
    .unwrap();
    let t = &new.refresh.as_ref().unwrap().transitions;
    let both: usize = t.counts.iter().flatten().sum();
    let arrived: usize = t.arrived.iter().sum();
    assert_eq!(
        both,
        old.customers.ids.len(),
        "every old customer is still there"
    );
    assert_eq!(both + arrived, new.customers.ids.len());
    assert!(arrived > 0, "customers who first bought after July 2025");
    let moved = both - t.stayed();
    assert!(moved > 0, "half a year changes some customers' behaviour");
    let diagonal: usize = (0..5)
        .filter(|&i| t.ids[i] == t.previous_ids[i])
        .map(|i| t.counts[i][i])
        .sum();
    assert!(
        t.stayed() >= diagonal,
        "stayed counts every pair with the same id"
    );
}

#[test]
fn a_group_that_leaves_retires_its_id_and_a_new_group_gets_a_new_one() {
    let dir = TempDir::new().unwrap();
    let fixed = demo_params(&SegmentParams {
        k: Some(KChoice::Fixed(5)),
        ..SegmentParams::default()
    });
    let (first, _) = demo_run(&dir, 4_000, &fixed);
    let path = dir.path().join("transactions.csv");
    // The changed log: every customer of the largest segment is gone, and
    // a new kind of customer arrives (a daily buyer of tiny baskets).
    let largest = first.profiles.iter().max_by_key(|p| p.size).unwrap().id as u32;
    let gone: std::collections::HashSet<&str> = first
        .customers
        .ids
        .iter()
        .zip(&first.prediction.labels)
        .filter(|(_, &l)| first.model.id_of(l) == largest)
        .map(|(id, _)| id.as_str())
        .collect();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let customer = header.split(',').position(|c| c == "customer_id").unwrap();
    let mut changed: Vec<String> = vec![header.to_owned()];
    changed.extend(
        lines
            .filter(|l| !gone.contains(l.split(',').nth(customer).unwrap()))
            .map(str::to_owned),
    );
    let columns: Vec<&str> = header.split(',').collect();
    let last_day = first.model.as_of - chrono::Days::new(1);
    for c in 0..800 {
        for d in 0..60u64 {
            let fields: Vec<String> = columns
                .iter()
                .map(|&name| match name {
                    "customer_id" => format!("NEW{c}"),
                    "order_id" => format!("NEW{c}-{d}"),
                    "date" => (last_day - chrono::Days::new(d)).to_string(),
                    "amount" => "1.50".to_owned(),
                    _ => "1".to_owned(),
                })
                .collect();
            changed.push(fields.join(","));
        }
    }
    let changed_path = dir.path().join("changed.csv");
    std::fs::write(&changed_path, changed.join("\n")).unwrap();
    let params = demo_params(&SegmentParams {
        as_of: Some(first.model.as_of),
        ..SegmentParams::default()
    });
    let refreshed = run_segmentation(
        &CpuBackend::new(),
        &changed_path,
        &params,
        Some(&first.model),
        &SegmentControl::default(),
    )
    .unwrap();
    let r = refreshed.refresh.as_ref().unwrap();
    let ids = refreshed.model.ids();
    assert!(
        !ids.contains(&largest),
        "the gone group's id is retired: {ids:?}"
    );
    assert!(
        r.changes
            .contains(&segmenta::segmentation::refresh::SegmentChange::Retired { id: largest }),
        "{:?}",
        r.changes
    );
    assert!(
        ids.iter().any(|&i| i >= 5),
        "a new id, never a reused one: {ids:?}"
    );
    // The new customers sit mostly in one segment, and it has a new id.
    let mut by_id: HashMap<u32, usize> = HashMap::new();
    for (id, &l) in refreshed
        .customers
        .ids
        .iter()
        .zip(&refreshed.prediction.labels)
    {
        if id.starts_with("NEW") {
            *by_id.entry(refreshed.model.id_of(l)).or_default() += 1;
        }
    }
    let (&home, &n) = by_id.iter().max_by_key(|(_, &n)| n).unwrap();
    assert!(n >= 600 && home >= 5, "new customers {by_id:?}");
    // Kept is counted: returning customers whose id did not change.
    let t = &r.transitions;
    assert_eq!(t.returning(), first.customers.ids.len() - gone.len());
    assert!(t.stayed() <= t.returning());
    // The segment ids in the table are the model's ids.
    let files = write_outputs(&refreshed, &dir.path().join("out")).unwrap();
    let table = std::fs::read_to_string(files.customers_csv).unwrap();
    let seen: std::collections::BTreeSet<u32> = table
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(10).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ids);
}

#[test]
fn output_files_are_valid() {
    let dir = TempDir::new().unwrap();
    let params = SegmentParams {
        k: Some(KChoice::Range(3..=6)),
        ..SegmentParams::default()
    };
    let (run, _) = demo_run(&dir, 3_000, &params);
    let out = dir.path().join("out");
    let files = write_outputs(&run, &out).unwrap();
    // Every chart is a PNG, and the HTML references exactly files that exist.
    assert!(files.charts.len() >= 5);
    for chart in &files.charts {
        let bytes = std::fs::read(chart).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", chart.display());
    }
    let html = std::fs::read_to_string(&files.report_html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    let images: Vec<&str> = html
        .split("<img src=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(images.len(), files.charts.len());
    for img in &images {
        assert!(out.join(img).is_file(), "report references missing {img}");
    }
    for needle in [
        "<h2>Segments</h2>",
        "Choosing k",
        "RFM segment rules",
        "Can't Lose Them",
    ] {
        assert!(html.contains(needle), "report lacks {needle:?}");
    }
    // The customer table: one row per customer in both formats.
    let n = run.customers.ids.len();
    let mut csv = csv::Reader::from_path(&files.customers_csv).unwrap();
    assert_eq!(csv.headers().unwrap().len(), 14);
    assert_eq!(csv.records().count(), n);
    let pq = std::fs::File::open(&files.customers_parquet).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows() as usize, n);
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(&names[1..6], FEATURE_NAMES);
    // segments.json carries the profiles and the sweep.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files.segments_json).unwrap()).unwrap();
    assert_eq!(doc["segments"].as_array().unwrap().len(), run.model.k());
    assert_eq!(doc["k_sweep"]["recommended_k"], run.model.k());
    // model.json loads back and assigns its customers as the run did.
    let model = SegmentModel::load(&files.model_json).unwrap();
    let again = model
        .assign(&CpuBackend::new(), run.customers.values_f32().view())
        .unwrap();
    assert_eq!(again.labels, run.prediction.labels);
}

#[test]
fn gpu_and_cpu_segment_the_same_customers_alike() {
    let Some(gpu) = common::gpu(None) else { return };
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("transactions.csv");
    write_demo_log(&path, 2_000, 5).unwrap();
    let params = demo_params(&SegmentParams {
        k: Some(KChoice::Fixed(5)),
        n_init: 1,
        ..SegmentParams::default()
    });
    let cpu = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params,
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    let gpu = run_segmentation(&gpu, &path, &params, None, &SegmentControl::default()).unwrap();
    // Same data, same k-means++ start (drawn on the host): the planted
    // groups are far apart, so no customer sits on a tie and the labels
    // agree exactly; centroid coordinates differ only by f32 summation order.
    assert_eq!(cpu.prediction.labels, gpu.prediction.labels);
    for (a, b) in cpu
        .model
        .kmeans
        .centroids()
        .iter()
        .zip(gpu.model.kmeans.centroids())
    {
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{a} vs {b}");
    }
}

/// Customers with fewer distinct profiles than k: the sweep stops at the
/// number of profiles instead of recommending a k with empty segments, a
/// fixed k above it is refused, and customers all alike have nothing to
/// segment.
#[test]
fn k_never_exceeds_the_distinct_customer_profiles() {
    let dir = TempDir::new().unwrap();
    let mut two = String::from("customer_id,date,amount\n");
    let mut alike = two.clone();
    for c in 0..300 {
        two.push_str(&format!("T{c},2025-05-01,25\n"));
        if c % 2 == 1 {
            two.push_str(&format!("T{c},2025-05-03,25\n"));
        }
        alike.push_str(&format!("S{c},2025-05-01,25\n"));
    }
    let two = write(&dir, "two.csv", &two);
    let alike = write(&dir, "alike.csv", &alike);
    let params = |k: Option<KChoice>| SegmentParams {
        features: Some(vec!["frequency".into()]),
        k,
        ..SegmentParams::default()
    };
    let run = |path: &Path, k: Option<KChoice>| {
        run_segmentation(
            &CpuBackend::new(),
            path,
            &params(k),
            None,
            &SegmentControl::default(),
        )
    };
    let chosen = run(&two, None).unwrap();
    assert_eq!(chosen.model.k(), 2);
    assert!(chosen.profiles.iter().all(|p| p.size == 150));
    let sweep = chosen.sweep.as_ref().unwrap();
    assert_eq!(sweep.scores.len(), 1, "{sweep:?}");
    assert!(
        sweep.reason.contains("only 2 distinct profiles"),
        "{}",
        sweep.reason
    );
    let e = run(&two, Some(KChoice::Fixed(3))).unwrap_err().to_string();
    assert!(
        e.contains("only 2 distinct customer profiles in frequency")
            && e.contains("k = 2 or fewer"),
        "{e}"
    );
    // A range asked for is refused as a --k would be.
    let e = run(&two, Some(KChoice::Range(3..=5)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ask for k = 2 or fewer"), "{e}");
    let e = run(&alike, Some(KChoice::Fixed(2)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("all 300 customers are alike in frequency"),
        "{e}"
    );
}

/// A log the value models cannot be fitted on (no customer bought twice)
/// costs the value columns, not the segments: the run says why, and so
/// does segments.json.
#[test]
fn segments_are_made_when_the_value_models_cannot_be() {
    let dir = TempDir::new().unwrap();
    let mut log = String::from("customer_id,date,amount\n");
    for c in 0..120 {
        log.push_str(&format!(
            "O{c},2025-0{}-1{},{}\n",
            1 + c % 9,
            c % 10,
            5 + (c * 37) % 400
        ));
    }
    let path = write(&dir, "log.csv", &log);
    let params = SegmentParams {
        k: Some(KChoice::Fixed(3)),
        clv: Some(segmenta::value::ValueOptions::default()),
        ..SegmentParams::default()
    };
    let run = run_segmentation(
        &CpuBackend::new(),
        &path,
        &params,
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    assert_eq!(run.model.k(), 3);
    assert!(run.value.is_none());
    let why = run.value_unavailable.as_deref().unwrap();
    assert!(why.contains("no customer has a repeat purchase"), "{why}");
    let out = dir.path().join("out");
    write_outputs(&run, &out).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("segments.json")).unwrap()).unwrap();
    assert_eq!(doc["value_unavailable"], why);
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("Not predicted: no customer has a repeat purchase"));
}
