//! Campaign experiments end to end: `segment --holdout-share` groups, and
//! `segmenta uplift` on outcomes with a planted lift.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tempfile::TempDir;

fn segmenta() -> Command {
    let mut cmd = Command::cargo_bin("segmenta").unwrap();
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd
}

/// A log of `n` customers with a few purchases each, lines in `order`.
fn write_log(dir: &Path, name: &str, n: usize, reverse: bool) -> PathBuf {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut lines = Vec::new();
    for c in 0..n {
        let purchases = 1 + rng.random_range(0..6);
        let spend = if c % 3 == 0 { 200.0 } else { 20.0 };
        for p in 0..purchases {
            let day = 1 + (c * 7 + p * 37) % 360;
            let month = 1 + (day - 1) / 30;
            let dom = 1 + (day - 1) % 28;
            lines.push(format!(
                "C{c:05},2025-{month:02}-{dom:02},{:.2}",
                spend * (0.5 + rng.random::<f64>())
            ));
        }
    }
    if reverse {
        lines.reverse();
    }
    let mut text = String::from("customer_id,date,amount\n");
    for l in lines {
        writeln!(text, "{l}").unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn segment(log: &Path, out: &Path, share: &str) {
    segmenta()
        .args(["segment", "--transactions", log.to_str().unwrap()])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--k",
            "3",
            "--backend",
            "cpu",
        ])
        .args(["--holdout-share", share, "--experiment-salt", "spring"])
        .assert()
        .success();
}

/// customer_id → (segment, group).
fn groups(out: &Path) -> HashMap<String, (String, String)> {
    let mut r = csv::Reader::from_path(out.join("customers.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let (id, seg, group) = (col("customer_id"), col("segment"), col("group"));
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[id].to_string(),
                (rec[seg].to_string(), rec[group].to_string()),
            )
        })
        .collect()
}

#[test]
fn groups_are_exact_per_segment_and_independent_of_row_order() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    segment(&write_log(dir.path(), "log.csv", 1200, false), &a, "0.15");
    segment(&write_log(dir.path(), "rev.csv", 1200, true), &b, "0.15");
    let (ga, gb) = (groups(&a), groups(&b));
    assert_eq!(ga.len(), 1200);
    let mut per_segment: HashMap<&str, (usize, usize)> = HashMap::new();
    for (seg, group) in ga.values() {
        let e = per_segment.entry(seg).or_default();
        e.0 += 1;
        e.1 += usize::from(group == "control");
    }
    for (seg, (n, control)) in per_segment {
        assert_eq!(control, (0.15 * n as f64).round() as usize, "segment {seg}");
    }
    // Same customers, same segments (the same data), same groups.
    let same = ga.iter().filter(|(id, v)| gb.get(*id) == Some(v)).count();
    assert_eq!(same, 1200);
}

/// Outcomes: treated customers convert with `p_t`, control with `p_c`.
fn write_outcomes(
    dir: &Path,
    groups: &HashMap<String, (String, String)>,
    p_t: f64,
    p_c: f64,
) -> PathBuf {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut text = String::from("customer_id,converted,revenue\n");
    let mut ids: Vec<&String> = groups.keys().collect();
    ids.sort();
    for id in ids {
        let p = if groups[id].1 == "treatment" {
            p_t
        } else {
            p_c
        };
        let converted = rng.random::<f64>() < p;
        let revenue = if converted {
            40.0 + 20.0 * rng.random::<f64>()
        } else {
            0.0
        };
        writeln!(text, "{id},{},{revenue:.2}", u8::from(converted)).unwrap();
    }
    let path = dir.join("outcomes.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn uplift_finds_a_planted_lift_and_writes_its_page() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("seg");
    segment(&write_log(dir.path(), "log.csv", 3000, false), &out, "0.3");
    let g = groups(&out);
    let outcomes = write_outcomes(dir.path(), &g, 0.30, 0.10);
    let page = dir.path().join("page");
    let output = segmenta()
        .args([
            "uplift",
            "--assignments",
            out.join("customers.csv").to_str().unwrap(),
        ])
        .args([
            "--outcomes",
            outcomes.to_str().unwrap(),
            "--out",
            page.to_str().unwrap(),
            "--json",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&output).unwrap();
    let all = &v["overall"];
    assert_eq!(
        all["treatment"]["customers"].as_u64().unwrap()
            + all["control"]["customers"].as_u64().unwrap(),
        3000
    );
    // A 20-point lift: the interval holds it and excludes zero.
    let (low, high) = (
        all["conversion"]["low"].as_f64().unwrap(),
        all["conversion"]["high"].as_f64().unwrap(),
    );
    assert!(low > 0.0 && low < 0.2 && high > 0.2, "[{low}, {high}]");
    assert!(all["conversion_p_value"].as_f64().unwrap() < 1e-6);
    assert!(all["revenue"]["low"].as_f64().unwrap() > 0.0);
    assert_eq!(v["segments"].as_array().unwrap().len(), 3);
    for f in ["uplift.html", "uplift.png", "uplift.json"] {
        assert!(page.join(f).exists(), "{f}");
    }

    // No lift planted: the interval holds zero.
    let none = write_outcomes(dir.path(), &g, 0.2, 0.2);
    let output = segmenta()
        .args([
            "uplift",
            "--assignments",
            out.join("customers.csv").to_str().unwrap(),
        ])
        .args(["--outcomes", none.to_str().unwrap(), "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&output).unwrap();
    let c = &v["overall"]["conversion"];
    assert!(
        c["low"].as_f64().unwrap() < 0.0 && c["high"].as_f64().unwrap() > 0.0,
        "{c}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let fails = |a: &Path, o: &Path, message: &str| {
        segmenta()
            .args([
                "uplift",
                "--assignments",
                a.to_str().unwrap(),
                "--outcomes",
                o.to_str().unwrap(),
            ])
            .assert()
            .failure()
            .stderr(predicate::str::contains(message))
            .stderr(predicate::str::contains("panicked").not());
    };
    let assigned = write(
        "a.csv",
        "customer_id,segment,group\nA,0,treatment\nB,0,control\nC,1,treatment\n",
    );
    let outcomes = write("o.csv", "customer_id,converted,revenue\nA,1,10\nB,0,0\n");
    let no_group = write("n.csv", "customer_id,segment\nA,0\n");
    fails(&no_group, &outcomes, "no column \"group\"");
    fails(&no_group, &outcomes, "--holdout-share");
    let bad_group = write("g.csv", "customer_id,segment,group\nA,0,placebo\n");
    fails(
        &bad_group,
        &outcomes,
        "row 1, column \"group\": expected treatment or control",
    );
    let twice = write(
        "t.csv",
        "customer_id,segment,group\nA,0,treatment\nA,1,control\n",
    );
    fails(&twice, &outcomes, "rows 1 and 2 have the same customer id");
    let bad_conv = write("c.csv", "customer_id,converted,revenue\nA,yes,10\n");
    fails(
        &assigned,
        &bad_conv,
        "row 1, column \"converted\": expected 0 or 1",
    );
    let bad_rev = write("r.csv", "customer_id,converted,revenue\nA,1,NaN\n");
    fails(
        &assigned,
        &bad_rev,
        "row 1, column \"revenue\": not a number",
    );
    fails(
        &assigned,
        &write(
            "dc.csv",
            "customer_id,converted,converted,revenue\nA,1,0,5\n",
        ),
        "column \"converted\" is named more than once",
    );
    fails(
        &assigned,
        &write("h.csv", "customer_id,converted,revenue\n"),
        "no outcome rows: nothing was measured",
    );
    let parquet = write("customers.parquet", "PAR1");
    fails(
        &parquet,
        &outcomes,
        "a Parquet file; give the CSV customer table",
    );
    fails(
        &assigned,
        &parquet,
        "a Parquet file; save the outcomes as CSV",
    );
    fails(
        &assigned,
        &write("x.csv", "customer_id,converted,revenue\nX,1,5\nY,0,0\n"),
        "no outcome row is for an assigned customer (2 rows name customers not in the assignments)",
    );
    // Revenue read as transaction amounts are, and 1.0/0.0 flags (what a
    // table with gaps is written as) are conversions.
    let four = write(
        "four.csv",
        "customer_id,segment,group\nA,0,treatment\nB,0,control\nC,0,treatment\nD,0,control\n",
    );
    let money = write(
        "m.csv",
        "customer_id,converted,revenue\nA,1.0,$10.00\nB,0.0,\nC,1,10 EUR\nD,1,2.50\n",
    );
    let plain = write(
        "p.csv",
        "customer_id,converted,revenue\nA,1,10\nB,0,0\nC,1,10\nD,1,2.5\n",
    );
    let report = |o: &Path| {
        let out = segmenta()
            .args(["uplift", "--assignments", four.to_str().unwrap()])
            .args(["--outcomes", o.to_str().unwrap(), "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v["overall"].clone()
    };
    assert_eq!(report(&money), report(&plain));
    let only_t = write(
        "only.csv",
        "customer_id,segment,group\nA,0,treatment\nB,0,treatment\n",
    );
    fails(
        &only_t,
        &outcomes,
        "fewer than two customers are in the control group",
    );
    let dup = write(
        "d.csv",
        "customer_id,converted,revenue\nA,1,10\nB,0,0\nA,0,0\n",
    );
    fails(&assigned, &dup, "rows 1 and 3 have the same customer id");
    fails(&dir.path().join("missing.csv"), &outcomes, "missing.csv");
    // Small groups, a segment with one arm and unmatched rows are
    // warnings, not errors; the segment without a control arm is left out.
    let assigned = write(
        "a2.csv",
        "customer_id,segment,group\nA,0,treatment\nB,0,control\nC,1,treatment\nD,0,treatment\nE,0,control\nF,1,treatment\n",
    );
    let extra = write("e.csv", "customer_id,converted,revenue\nA,1,10\nZ,1,5\n");
    let out = segmenta()
        .args(["uplift", "--assignments", assigned.to_str().unwrap()])
        .args(["--outcomes", extra.to_str().unwrap(), "--json"])
        .assert()
        .success()
        .stderr(predicate::str::contains("panicked").not())
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let segments: Vec<&str> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stratum"].as_str().unwrap())
        .collect();
    assert_eq!(segments, ["0"]);
    let warnings = v["warnings"].to_string();
    for w in [
        "segment 1: 2 treated and 0 control customers, too few to compare; left out",
        "groups too small",
        "1 outcome rows name customers not in the assignments",
        "5 assigned customers have no outcome row",
    ] {
        assert!(warnings.contains(w), "{w} not in {warnings}");
    }
    // A European spreadsheet's outcomes: BOM, semicolons, decimal commas.
    let eu = write(
        "eu.csv",
        "\u{feff}customer_id;converted;revenue\nA;1;\"1.234,50\"\nZ;1;5,00\n",
    );
    fails(
        &assigned,
        &eu,
        "row 1, column \"revenue\": not a number (it reads with --decimal-comma)",
    );
    let v: serde_json::Value = serde_json::from_slice(
        &segmenta()
            .args(["uplift", "--assignments", assigned.to_str().unwrap()])
            .args([
                "--outcomes",
                eu.to_str().unwrap(),
                "--decimal-comma",
                "--json",
            ])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        v["overall"]["treatment"]["revenue_per_customer"],
        1234.5 / 4.0
    );
    // The table marks the rows too small to mean much, not only stderr.
    let table = segmenta()
        .args(["uplift", "--assignments", assigned.to_str().unwrap()])
        .args(["--outcomes", extra.to_str().unwrap()])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("0 (small)")),
        "{table}"
    );
}
