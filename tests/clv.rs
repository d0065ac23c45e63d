//! `segmenta clv` end to end: a transaction log simulated from known BG/NBD
//! and Gamma-Gamma processes, the JSON and files it writes, the holdout
//! check, and a clear error for each bad input.

use std::path::PathBuf;

mod common;

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

fn segmenta() -> Command {
    let mut cmd = Command::cargo_bin("segmenta").unwrap();
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd
}

/// The shop of [`common::logs::buying_and_leaving`], seed 5.
fn write_log(dir: &TempDir, customers: usize) -> PathBuf {
    let path = dir.path().join("log.csv");
    common::logs::buying_and_leaving(&path, customers, 5);
    path
}

fn json_of(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_log_gives_parameters_scores_files_and_a_holdout_check() {
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 2000);
    let out = dir.path().join("out");
    let v = json_of(segmenta().args([
        "clv",
        "--transactions",
        log.to_str().unwrap(),
        "--calibration-end",
        "2025-03-31",
        "--holdout-end",
        "2025-12-31",
        "--horizon",
        "26",
        "--discount-rate",
        "0.002",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    for key in ["r", "alpha", "a", "b", "log_likelihood"] {
        let x = v["bgnbd"][key].as_f64().unwrap();
        assert!(x.is_finite(), "{key} = {x}");
    }
    for key in ["r", "alpha", "a", "b"] {
        assert!(v["bgnbd"]["std_errors"][key].as_f64().unwrap() > 0.0);
    }
    for key in ["p", "q", "v"] {
        assert!(v["gamma_gamma"][key].as_f64().unwrap() > 0.0);
        // Named as the BG/NBD's are (an array before).
        assert!(v["gamma_gamma"]["std_errors"][key].as_f64().unwrap() > 0.0);
    }
    let n = v["n_customers"].as_u64().unwrap();
    assert!(n > 1000 && v["n_repeat_customers"].as_u64().unwrap() < n);
    assert_eq!(v["horizon"], 26);
    // The holdout check: buckets 0 … 7+, totals that add up.
    let h = &v["holdout"];
    let buckets = h["by_repeat_purchases"].as_array().unwrap();
    let total: u64 = buckets
        .iter()
        .map(|b| b["customers"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n);
    assert_eq!(buckets.last().unwrap()["repeat_purchases"], "7+");
    let (predicted, actual) = (
        h["total_predicted"].as_f64().unwrap(),
        h["total_actual"].as_f64().unwrap(),
    );
    assert!(
        actual > 0.0 && (predicted / actual - 1.0).abs() < 0.5,
        "{predicted} vs {actual}"
    );
    // One row per customer with every column; tiers by CLV rank.
    let mut rows = csv::Reader::from_path(out.join("customers.csv")).unwrap();
    let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "customer_id",
            "x",
            "t_x",
            "T",
            "p_alive",
            "expected_purchases",
            "expected_spend",
            "clv",
            "value_tier",
            "churn_risk"
        ]
    );
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(records.len() as u64, n);
    let clv = |r: &csv::StringRecord| r[7].parse::<f64>().unwrap();
    let top: Vec<&csv::StringRecord> = records.iter().filter(|r| &r[8] == "Top 1 %").collect();
    let rest_max = records
        .iter()
        .filter(|r| &r[8] == "Rest")
        .map(clv)
        .fold(0.0, f64::max);
    assert_eq!(top.len() as u64, n.div_ceil(100));
    assert!(top.iter().all(|r| clv(r) >= rest_max));
    for r in &records {
        let p: f64 = r[4].parse().unwrap();
        assert!((0.0..=1.0).contains(&p));
        let risk = if p < 0.5 {
            "high"
        } else if p < 0.8 {
            "medium"
        } else {
            "low"
        };
        assert_eq!(&r[9], risk);
    }
    assert!(out.join("customers.parquet").exists() && out.join("clv.json").exists());
    // The report: the parameters, the holdout table with the JSON's
    // figures, and both charts drawn.
    let report = std::fs::read_to_string(out.join("clv.html")).unwrap();
    assert!(report.contains(&format!("{:.6}", v["bgnbd"]["r"].as_f64().unwrap())));
    assert!(report.contains("Holdout check"));
    assert!(report.contains(&format!("{} made", h["total_actual"])));
    assert!(report.contains(&format!("{:.3}", h["mae"].as_f64().unwrap())));
    for chart in ["p_alive.png", "holdout.png"] {
        assert!(report.contains(&format!("src=\"{chart}\"")));
        assert!(std::fs::metadata(out.join(chart)).unwrap().len() > 1000);
    }
    assert_eq!(
        v["files"]["charts"].as_array().map(Vec::len),
        Some(2),
        "{}",
        v["files"]
    );
}

/// Runs `clv` on `log` with `args` and expects a one-line error with `message`.
fn fails(log: &std::path::Path, args: &[&str], message: &str) {
    segmenta()
        .args(["clv", "--transactions", log.to_str().unwrap()])
        .args(args)
        .assert()
        .failure()
        .stderr(predicate::str::contains(message))
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 300);
    fails(
        &log,
        &["--calibration-end", "2023-06-01"],
        "the calibration end 2023-06-01 is before the first purchase in the log (2024-01-",
    );
    fails(
        &log,
        &["--calibration-end", "2027-01-01"],
        "the calibration end 2027-01-01 is after the last purchase in the log",
    );
    fails(
        &log,
        &[
            "--calibration-end",
            "2025-03-31",
            "--holdout-end",
            "2025-03-01",
        ],
        "the holdout end 2025-03-01 must come after the calibration end 2025-03-31",
    );
    fails(&log, &["--calibration-end", "31/03/2025"], "31/03/2025");
    fails(
        &log,
        &["--calibration-end", "2025-03-31", "--order-col", "order_id"],
        "--order-col is not used by clv: its models count purchase days",
    );
    fails(
        &log,
        &[
            "--calibration-end",
            "2025-03-31",
            "--churn-thresholds",
            "0.9,0.2",
        ],
        "churn thresholds must satisfy 0 < high <= medium < 1",
    );
    fails(
        &log,
        &["--calibration-end", "2025-03-31", "--discount-rate", "1.5"],
        "the discount rate per period must be in [0, 1)",
    );
    // A negative number is a value, not an option: the same message.
    fails(
        &log,
        &["--calibration-end", "2025-03-31", "--discount-rate", "-0.5"],
        "the discount rate per period must be in [0, 1)",
    );
    fails(
        &log,
        &["--calibration-end", "2025-03-31", "--horizon", "0"],
        "the horizon must be at least 1 period",
    );
    // Nobody bought twice.
    let once = dir.path().join("once.csv");
    std::fs::write(
        &once,
        "customer_id,date,amount\nA,2024-01-01,5\nB,2024-02-01,7\nC,2024-03-01,9\n",
    )
    .unwrap();
    fails(
        &once,
        &["--calibration-end", "2024-03-01"],
        "no customer has a repeat purchase",
    );
    // The holdout has no purchase at all.
    let gap = dir.path().join("gap.csv");
    std::fs::write(
        &gap,
        "customer_id,date,amount\nA,2024-01-01,5\nA,2024-01-20,7\nB,2024-01-03,9\nB,2024-02-01,4\nC,2024-01-05,1\nC,2024-02-10,2\nZ,2024-06-01,3\n",
    )
    .unwrap();
    fails(
        &gap,
        &[
            "--calibration-end",
            "2024-02-10",
            "--holdout-end",
            "2024-05-01",
        ],
        "the holdout is empty",
    );
    // Mostly unreadable amounts: the bad-row summary, as for `segment`.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "customer_id,date,amount\nA,2024-01-01,x\nA,2024-01-20,y\nB,2024-01-03,9\n",
    )
    .unwrap();
    fails(
        &bad,
        &["--calibration-end", "2024-01-20"],
        "2 with an unreadable amount",
    );
    // Ten years at most: past it the work grows and the models say nothing.
    fails(
        &log,
        &[
            "--calibration-end",
            "2025-03-31",
            "--time-unit",
            "day",
            "--horizon",
            "4000",
        ],
        "the horizon is at most ten years (3653 days), got 4000",
    );
    // Finite amounts whose sum is not: an error naming the customer, never
    // a stand-in spend.
    let huge = dir.path().join("huge.csv");
    let mut text = String::from("customer_id,date,amount\nA,2024-01-01,5\nA,2024-01-20,7\n");
    for day in 2..12 {
        text.push_str(&format!("B,2024-01-{day:02},1e308\n"));
    }
    std::fs::write(&huge, text).unwrap();
    fails(
        &huge,
        &["--calibration-end", "2024-01-20"],
        "customer 1: the spend per purchase day does not add up to a finite number",
    );
    // No rows at all, or only a header: said so, not "unknown column".
    for (name, text, message) in [
        ("empty.csv", "", "the file is empty: no header row"),
        (
            "header.csv",
            "customer_id,date,amount\n",
            "the transaction log has no rows, only a header",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        fails(&path, &["--calibration-end", "2024-01-20"], message);
    }
}

/// A line dated in the future (a typo: 2099 for 2019) is left out with a
/// warning; before, it moved the "after the last purchase" check, so a
/// calibration end decades ahead was accepted.
#[test]
fn a_future_line_is_left_out_with_a_warning() {
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 300);
    let mut text = std::fs::read_to_string(&log).unwrap();
    let header = text.lines().next().unwrap().to_owned();
    assert_eq!(
        header, "customer_id,date,amount",
        "the log's columns changed"
    );
    text.push_str("C00000,2099-01-01,50\n");
    let typo = dir.path().join("typo.csv");
    std::fs::write(&typo, &text).unwrap();
    fails(
        &typo,
        &["--calibration-end", "2030-06-30"],
        "the calibration end 2030-06-30 is after the last purchase in the log",
    );
    let run = |path: &std::path::Path| {
        json_of(
            segmenta()
                .args(["clv", "--transactions", path.to_str().unwrap()])
                .args(["--calibration-end", "2025-03-31", "--json"]),
        )
    };
    let (clean, typo_run) = (run(&log), run(&typo));
    let warning = "1 line dated after today (the latest 2099-01-01) left out: check the dates";
    segmenta()
        .args(["clv", "--transactions", typo.to_str().unwrap()])
        .args(["--calibration-end", "2025-03-31"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("warning: {warning}")));
    assert!(
        typo_run["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str() == Some(warning)),
        "{}",
        typo_run["warnings"]
    );
    assert_eq!(clean["bgnbd"], typo_run["bgnbd"]);
    assert_eq!(clean["total_clv"], typo_run["total_clv"]);
}

/// A set cancel flag stops the job with `Cancelled`, whatever phase it is
/// in when it is seen.
#[test]
fn a_cancelled_job_stops() {
    use segmenta::value::{run_clv, ClvParams, ValueError};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 2000);
    let mut params = ClvParams::new(chrono::NaiveDate::from_ymd_opt(2025, 3, 31).unwrap());
    params.cancel = Some(Arc::new(AtomicBool::new(true)));
    match run_clv(&log, &params) {
        Err(segmenta::Error::Value(ValueError::Cancelled)) => {}
        other => panic!(
            "expected a cancelled job, got {:?}",
            other.map(|r| r.summary)
        ),
    }
    params.cancel = Some(Arc::new(AtomicBool::new(false)));
    if let Err(e) = run_clv(&log, &params) {
        panic!("{e}");
    }
}

#[test]
fn segment_with_clv_adds_value_columns_profiles_and_charts() {
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 1500);
    let out = dir.path().join("seg");
    let v = json_of(segmenta().args([
        "segment",
        "--transactions",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--k",
        "3",
        "--backend",
        "cpu",
        "--clv",
        "--json",
    ]));
    // The value summary rides along, and every segment has a value profile
    // whose shares add up to the whole.
    assert!(v["value"]["bgnbd"]["r"].as_f64().unwrap() > 0.0);
    let segments = v["segments"].as_array().unwrap();
    let share: f64 = segments
        .iter()
        .map(|s| s["value"]["value_share"].as_f64().unwrap())
        .sum();
    assert!((share - 1.0).abs() < 1e-9, "{share}");
    let total: f64 = segments
        .iter()
        .map(|s| s["value"]["total_clv"].as_f64().unwrap())
        .sum();
    let whole = v["value"]["total_clv"].as_f64().unwrap();
    assert!((total - whole).abs() <= 1e-9 * whole);
    // The customer table gains the six value columns after the usual ones.
    let mut rows = csv::Reader::from_path(out.join("customers.csv")).unwrap();
    let header: Vec<String> = rows.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        &header[header.len() - 6..],
        [
            "p_alive",
            "expected_purchases",
            "expected_spend",
            "clv",
            "value_tier",
            "churn_risk"
        ]
    );
    assert_eq!(
        rows.records().count() as u64,
        v["n_customers"].as_u64().unwrap()
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("<h2>Customer value</h2>"));
    for chart in ["value_by_segment.png", "p_alive.png"] {
        assert!(report.contains(chart), "{chart} not in the report");
        assert!(std::fs::metadata(out.join(chart)).unwrap().len() > 1000);
    }
}

/// A report is shared: an unreadable cell (here an e-mail shifted into the
/// amount column) is named by row and column in the files `clv` and
/// `segment` write, never quoted; the terminal, the analyst's own, shows it.
#[test]
fn written_files_never_quote_an_unreadable_cell() {
    let dir = TempDir::new().unwrap();
    let log = write_log(&dir, 1000);
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("Jane Doe,2025-05-05,jane.doe@example.com\n");
    std::fs::write(&log, text).unwrap();
    for (name, extra) in [
        ("clv", &["--calibration-end", "2025-03-31"][..]),
        ("segment", &["--clv", "--k", "3"][..]),
    ] {
        let out = dir.path().join(name);
        let run = segmenta()
            .args([name, "--transactions", log.to_str().unwrap()])
            .args(extra)
            .args(["--out", out.to_str().unwrap()])
            .assert()
            .success();
        let said = String::from_utf8_lossy(&run.get_output().stderr).into_owned()
            + &String::from_utf8_lossy(&run.get_output().stdout);
        assert!(said.contains("jane.doe@example.com"), "{name}: {said}");
        let mut files = 0;
        for entry in std::fs::read_dir(&out).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            files += 1;
            assert!(
                !String::from_utf8_lossy(&bytes).contains("jane.doe"),
                "{name}: {} quotes the cell",
                path.display()
            );
        }
        assert!(files >= 4, "{name}: {files} files");
    }
}
