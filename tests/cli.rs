//! The `segmenta` binary: outputs, and a clear error (never a panic) for bad input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

mod common;

fn segmenta() -> Command {
    let mut cmd = Command::cargo_bin("segmenta").unwrap();
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("SEGMENTA_BACKEND");
    cmd
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/customers.csv")
}

/// Runs a command that must succeed and print one JSON value.
fn json_of(args: &[&str]) -> serde_json::Value {
    let out = segmenta()
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

/// Runs a command that must fail cleanly with `message` on stderr.
fn fails_with(args: &[&str], message: &str) {
    segmenta()
        .args(args)
        .assert()
        .failure()
        .code(1)
        .stderr(predicate::str::contains(message))
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn kmeans_json_is_one_object_with_the_documented_fields() {
    let v = json_of(&[
        "kmeans",
        "--input",
        example().to_str().unwrap(),
        "--k",
        "4",
        "--backend",
        "cpu",
        "--standardize",
        "--json",
    ]);
    for field in [
        "backend",
        "adapter",
        "k",
        "n_iter",
        "inertia",
        "centroids",
        "cluster_sizes",
        "inertia_history",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["k"], 4);
    assert_eq!(v["centroids"].as_array().unwrap().len(), 4);
    assert_eq!(v["centroids"][0].as_array().unwrap().len(), 5);
    let sizes: u64 = v["cluster_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .sum();
    assert_eq!(sizes, 800);
    assert_eq!(
        v["inertia_history"].as_array().unwrap().len() as u64,
        v["n_iter"].as_u64().unwrap()
    );
}

#[test]
fn pca_json_has_the_documented_fields() {
    let v = json_of(&[
        "pca",
        "--input",
        example().to_str().unwrap(),
        "--n-components",
        "2",
        "--backend",
        "cpu",
        "--json",
    ]);
    for field in [
        "backend",
        "adapter",
        "n_components",
        "explained_variance",
        "explained_variance_ratio",
        "components",
        "mean",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["components"].as_array().unwrap().len(), 2);
    assert_eq!(v["mean"].as_array().unwrap().len(), 5);
}

#[test]
fn table_output_names_backend_and_clusters() {
    segmenta()
        .args([
            "kmeans",
            "--input",
            example().to_str().unwrap(),
            "--k",
            "3",
            "--backend",
            "cpu",
            "--columns",
            "recency_days,monetary",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("backend cpu"))
        .stdout(predicate::str::contains("recency_days"))
        .stdout(predicate::str::contains("tenure_days").not());
}

#[test]
fn labels_out_writes_one_row_per_input_row() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("labels.csv");
    segmenta()
        .args([
            "kmeans",
            "--input",
            example().to_str().unwrap(),
            "--k",
            "4",
            "--backend",
            "cpu",
            "--labels-out",
            out.to_str().unwrap(),
        ])
        .assert()
        .success();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a new labels file is its owner's only");
    }
    let text = std::fs::read_to_string(out).unwrap();
    assert_eq!(text.lines().count(), 801);
    assert!(text.starts_with("row,label,distance"));
}

#[test]
fn parquet_input_with_a_weights_column() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("t.parquet");
    let col = |v: Vec<f64>| Arc::new(Float64Array::from(v)) as ArrayRef;
    let batch = RecordBatch::try_from_iter([
        (
            "a",
            col((0..40)
                .map(|i| (i % 2) as f64 * 10.0 + i as f64 * 0.01)
                .collect()),
        ),
        // A name with a trailing space, as spreadsheets leave them: read
        // as "b", as a CSV header's would be.
        ("b ", col((0..40).map(|i| (i % 2) as f64 * -5.0).collect())),
        ("w", col(vec![1.0; 40])),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..40).map(|i| format!("c{i}")),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let p = path.to_str().unwrap();
    let weighted = |columns: &str| {
        json_of(&[
            "kmeans",
            "--input",
            p,
            "--columns",
            columns,
            "--weights",
            "w",
            "--k",
            "2",
            "--backend",
            "cpu",
            "--json",
        ])
    };
    let v = weighted("a,b,w");
    assert_eq!(v["cluster_sizes"], serde_json::json!([20, 20]));
    assert_eq!(v["columns"], serde_json::json!(["a", "b"]));
    // The weights column need not be among `--columns`.
    let named = weighted("a,b");
    assert_eq!(named["columns"], v["columns"]);
    assert_eq!(named["centroids"], v["centroids"]);
    // An unknown weights column; a column named twice would count twice
    // in every distance.
    for (columns, weights, message) in [
        ("a,b", "v", "unknown column \"v\""),
        ("a,b,a", "w", "column \"a\" is named more than once"),
        ("a,w,w", "w", "column \"w\" is named more than once"),
    ] {
        let args = ["kmeans", "--input", p, "--k", "2", "--columns", columns];
        fails_with(&[&args[..], &["--weights", weights]].concat(), message);
    }
    fails_with(
        &["kmeans", "--input", p, "--k", "2", "--columns", "a,name"],
        "column \"name\" has type Utf8, which is not numeric",
    );
}

/// Output piped into a reader that has gone (`| head`) ends the command
/// quietly, by SIGPIPE as other tools end, never with a panic (the fit
/// takes long enough that its first line meets no reader).
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_segmenta"));
    cmd.args(["kmeans", "--input", example().to_str().unwrap()])
        .args(["--k", "300", "--backend", "cpu"]);
    common::ends_quietly_on_a_closed_pipe(&mut cmd);
}

/// On a headless server (no `XDG_RUNTIME_DIR`) Mesa's Vulkan layer used to
/// print "error: XDG_RUNTIME_DIR is invalid" while the GPUs were listed,
/// twice, for a run that went well. Where no Vulkan driver is installed
/// nothing is listed, and the check holds trivially; CI installs Mesa's.
#[test]
fn a_headless_run_prints_no_display_errors() {
    let out = Command::cargo_bin("segmenta")
        .unwrap()
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .env_remove("SEGMENTA_BACKEND")
        .args(["kmeans", "--input", example().to_str().unwrap(), "--k", "3"])
        .args(["--backend", "auto", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}

/// A header holding control characters (a binary file, or a hostile one)
/// is shown escaped: no escape sequence reaches the terminal.
#[test]
fn control_characters_in_a_header_are_shown_escaped() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "odd.csv", "\u{1b}[2Jwipe,b\n1,2\n3,4\n");
    let out = segmenta()
        .args(["kmeans", "--input", path.to_str().unwrap(), "--k", "1"])
        .args(["--columns", "x", "--backend", "cpu"])
        .assert()
        .failure()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(
        stderr.contains("available columns: \\u{1b}[2Jwipe, b"),
        "{stderr:?}"
    );
}

#[test]
fn missing_file() {
    fails_with(
        &["kmeans", "--input", "/nonexistent/data.csv", "--k", "2"],
        "cannot read /nonexistent/data.csv",
    );
}

#[test]
fn unreadable_file() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("folder.csv");
    std::fs::create_dir(&folder).unwrap();
    fails_with(
        &["kmeans", "--input", folder.to_str().unwrap(), "--k", "2"],
        "folder.csv",
    );
}

/// Writes `text` to a file called `name` and runs `command` on it with
/// `extra` arguments; it must fail with `message`.
fn fails_on_file(name: &str, text: &str, command: &[&str], message: &str) {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, name, text);
    let mut args = vec![command[0], "--input", path.to_str().unwrap()];
    args.extend_from_slice(&command[1..]);
    fails_with(&args, message);
}

const KMEANS_K1: &[&str] = &["kmeans", "--k", "1"];

#[test]
fn unsupported_file_type() {
    fails_on_file("data.xlsx", "a\n1\n", KMEANS_K1, "unsupported file type");
}

#[test]
fn empty_data() {
    fails_on_file("empty.csv", "a,b\n", KMEANS_K1, "the data has no rows");
    fails_on_file(
        "nothing.csv",
        "",
        KMEANS_K1,
        "the file is empty: no header row",
    );
}

#[test]
fn nan_and_infinity_name_row_and_column() {
    let nan = "non-finite value (NaN) at row 2, column \"b\"";
    fails_on_file("nan.csv", "a,b\n1,2\n3,NaN\n", KMEANS_K1, nan);
    let inf = "non-finite value (inf) at row 2, column \"a\"";
    fails_on_file(
        "inf.csv",
        "a,b\n1,2\ninf,4\n5,6\n",
        &["pca", "--n-components", "1"],
        inf,
    );
}

#[test]
fn k_out_of_range() {
    let p = example();
    let p = p.to_str().unwrap();
    fails_with(
        &["kmeans", "--input", p, "--k", "0"],
        "k must be at least 1",
    );
    fails_with(
        &["kmeans", "--input", p, "--k", "801"],
        "k = 801 is larger than the number of rows (800)",
    );
}

#[test]
fn too_many_components() {
    fails_with(
        &[
            "pca",
            "--input",
            example().to_str().unwrap(),
            "--n-components",
            "6",
        ],
        "n_components = 6 is larger than the number of features (5)",
    );
}

#[test]
fn unknown_column() {
    fails_with(
        &[
            "kmeans",
            "--input",
            example().to_str().unwrap(),
            "--k",
            "2",
            "--columns",
            "recency_days,age",
        ],
        "unknown column \"age\"",
    );
}

/// Column lists are trimmed like the header's names and never hold an
/// empty name; a header column without a name (a spreadsheet's index, say)
/// is refused when every column is taken, and can be left out.
#[test]
fn column_lists_are_trimmed_and_unnamed_columns_refused() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "index.csv", ",a,b\n0,1,2\n1,3,5\n2,8,1\n");
    let p = path.to_str().unwrap();
    let fit = |columns: &[&str]| -> Vec<String> {
        let args = ["kmeans", "--input", p, "--k", "2", "--backend", "cpu"];
        let all = [&args[..], columns, &["--json"]].concat();
        all.into_iter().map(str::to_owned).collect()
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let v = json_of(&strs(&fit(&["--columns", " a , b"])));
    assert_eq!(v["columns"], serde_json::json!(["a", "b"]));
    let v = json_of(&strs(&fit(&["--columns", "a", "--weights", " b "])));
    assert_eq!(v["columns"], serde_json::json!(["a"]));
    fails_with(
        &strs(&fit(&[])),
        "column 1 of the header has no name: name it, or choose the columns to use",
    );
    // A usage error: clap's exit code 2.
    for list in ["a,,b", "a,b,", " "] {
        segmenta()
            .args(fit(&["--columns", list]))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("an empty column name"));
    }
}

/// An id column's digits are never read as a number: taking every column
/// of a file with customer ids like `cust1` is an error naming the cell.
#[test]
fn ids_with_digits_are_not_numbers() {
    fails_on_file(
        "ids.csv",
        "id,x\ncust1,1\ncust2,2\ncust10,10\n",
        &["kmeans", "--k", "2"],
        "column \"id\", row 1: \"cust1\" is not a number",
    );
}

#[test]
fn non_numeric_value_names_column_and_row() {
    let message = "column \"spend\", row 2: \"abc\" is not a number";
    fails_on_file("text.csv", "id,spend\n1,10.5\n2,abc\n", KMEANS_K1, message);
}

#[test]
fn backend_choice_without_any_vulkan_driver() {
    // Point the Vulkan loader at no driver: `gpu` must fail clearly, `auto`
    // must quietly use the CPU.
    let p = example();
    let run = |backend: &str| {
        let mut cmd = segmenta();
        cmd.env("VK_ICD_FILENAMES", "/nonexistent.json")
            .env("VK_DRIVER_FILES", "/nonexistent.json")
            .args([
                "kmeans",
                "--input",
                p.to_str().unwrap(),
                "--k",
                "2",
                "--json",
                "--backend",
                backend,
            ]);
        cmd
    };
    run("gpu")
        .assert()
        .failure()
        .stderr(predicate::str::contains("no GPU adapter found"));
    run("auto")
        .assert()
        .success()
        .stdout(predicate::str::contains("\"backend\":\"cpu\""));
}

// ---------------------------------------------------------------- segment and demo

#[test]
fn demo_recovers_its_planted_groups_and_writes_the_report() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("demo");
    let v = json_of(&[
        "demo",
        "--customers",
        "3000",
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert_eq!(v["k"], 5, "k chosen by the sweep");
    assert!(
        v["demo"]["adjusted_rand_index"].as_f64().unwrap() >= 0.95,
        "{}",
        v["demo"]
    );
    for file in [
        "transactions.csv",
        "planted_groups.csv",
        "customers.csv",
        "customers.parquet",
        "segments.json",
        "model.json",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
}

#[test]
fn segment_then_refresh_from_the_cli() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.csv");
    segmenta::segmentation::demo::write_demo_log(&log, 2_000, 3).unwrap();
    let first = dir.path().join("first");
    let v = json_of(&[
        "segment",
        "--transactions",
        log.to_str().unwrap(),
        "--order-col",
        "order_id",
        "--k",
        "4",
        "--as-of",
        "2026-01-20",
        "--out",
        first.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert_eq!(v["k"], 4);
    assert_eq!(v["as_of"], "2026-01-20");
    assert!(v["k_sweep"].is_null());
    // A directory the run created holds customers' data: its owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    // What segments.json holds, and what only the run knows.
    let clustered = v["feature_choice"]["clustered"].as_array().unwrap();
    assert_eq!(
        &v["preprocessing"]["features"],
        &serde_json::json!(clustered)
    );
    assert_eq!(
        v["preprocessing"]["log1p"].as_array().map(Vec::len),
        Some(clustered.len())
    );
    assert!(v["converged"].is_boolean() && v["elapsed_seconds"].is_number());
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("segments.json")).unwrap()).unwrap();
    // (Floats stored as f32 print shorter in the file: compared as such.)
    for key in ["feature_choice", "input"] {
        assert_eq!(v[key], document[key], "{key}");
    }
    let sizes = |d: &serde_json::Value| -> Vec<(u64, u64)> {
        let segments = d["segments"].as_array().unwrap().iter();
        segments
            .map(|s| (s["id"].as_u64().unwrap(), s["size"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(sizes(&v), sizes(&document));
    let model = first.join("model.json");
    let second = dir.path().join("second");
    let v = json_of(&[
        "segment",
        "--transactions",
        log.to_str().unwrap(),
        "--order-col",
        "order_id",
        "--previous",
        model.to_str().unwrap(),
        "--as-of",
        "2026-01-20",
        "--out",
        second.to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert_eq!(
        v["refresh"]["transitions"]["arrived"],
        serde_json::json!([0, 0, 0, 0])
    );
    assert!(second.join("transitions.png").is_file());
    // A typo'd year (2099) is left out with a warning: the as-of date and
    // every recency stay as they were.
    let mut text = std::fs::read_to_string(&log).unwrap();
    let (customer, rest) = text.lines().nth(1).unwrap().split_once(',').unwrap();
    let order = rest.split(',').next().unwrap();
    text.push_str(&format!("{customer},{order},2099-01-01,10\n"));
    let typo = dir.path().join("typo.csv");
    std::fs::write(&typo, text).unwrap();
    let run = |path: &Path, out: &Path| {
        segmenta()
            .args(["segment", "--transactions", path.to_str().unwrap()])
            .args([
                "--k",
                "4",
                "--out",
                out.to_str().unwrap(),
                "--backend",
                "cpu",
            ])
            .assert()
            .success()
            .get_output()
            .clone()
    };
    let clean = run(&log, &dir.path().join("clean"));
    let typod = run(&typo, &dir.path().join("typo"));
    let stderr = String::from_utf8_lossy(&typod.stderr);
    assert!(
        stderr.contains(
            "warning: 1 line dated after today (the latest 2099-01-01) left out: check the dates"
        ),
        "{stderr}"
    );
    let first_line = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    // "N customers as of DATE from M rows …": one row more, same date.
    let (a, b) = (first_line(&clean), first_line(&typod));
    assert_eq!(
        a.split(" from ").next(),
        b.split(" from ").next(),
        "{a}\n{b}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("clean/customers.csv")).unwrap(),
        std::fs::read(dir.path().join("typo/customers.csv")).unwrap()
    );
    // The table form names the report.
    segmenta()
        .args([
            "segment",
            "--transactions",
            log.to_str().unwrap(),
            "--k",
            "3",
            "--out",
            second.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("report: ").and(predicate::str::contains("report.html")));
    // The refresh's chart is gone with the refresh: not beside a report
    // that no longer shows it.
    assert!(!second.join("transitions.png").exists());
    assert!(second.join("pca_scatter.png").is_file());
}

#[test]
fn segment_rejects_bad_options_and_rows_clearly() {
    let dir = TempDir::new().unwrap();
    let log = write(
        &dir,
        "log.csv",
        "customer_id,date,amount\na,2024-01-01,5\nb,2024-01-02,oops\nc,2024-01-03,7\n",
    );
    let out = dir.path().join("out");
    let base = |extra: &[&str]| {
        let mut args = vec![
            "segment",
            "--transactions",
            log.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let check = |extra: &[&str], message: &str| {
        let args = base(extra);
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            message,
        );
    };
    check(
        &["--bad-rows", "reject"],
        "row 2: an unreadable amount (column \"amount\", value \"oops\")",
    );
    check(
        &[],
        "1 of 3 rows (33.3 %) could not be read, more than the 1 % allowed (--max-bad-rows 0.01): \
         1 with an unreadable amount (e.g. row 2, column \"amount\": \"oops\")",
    );
    check(&["--max-bad-rows", "1.5"], "invalid --max-bad-rows 1.5");
    let tolerant = ["--max-bad-rows", "0.5"];
    check(&["--k-range", "9..2"], "invalid k range \"9..2\"");
    check(
        &[&tolerant[..], &["--k", "5"]].concat(),
        "2 customers are too few to form 5 segments",
    );
    check(&["--as-of", "01/02/2024"], "invalid date \"01/02/2024\"");
    check(
        &[&tolerant[..], &["--as-of", "2020-01-01"]].concat(),
        "no customer has a purchase on or before the as-of date 2020-01-01",
    );
    check(&["--amount-col", "total"], "unknown column \"total\"");
    check(
        &["--outlier-percentile", "100"],
        "outlier percentile must be in (0, 100)",
    );
    let header_only = write(&dir, "header.csv", "customer_id,date,amount\n");
    fails_with(
        &[
            "segment",
            "--transactions",
            header_only.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "the transaction log has no rows, only a header",
    );
    let garbage = write(&dir, "model.json", "{\"not\": \"a model\"}");
    check(&["--previous", garbage.to_str().unwrap()], "previous model");
    let km = dir.path().join("km.json");
    let input = example();
    segmenta()
        .args(["kmeans", "--input", input.to_str().unwrap(), "--k", "2"])
        .args(["--backend", "cpu", "--save-model", km.to_str().unwrap()])
        .assert()
        .success();
    check(
        &["--previous", km.to_str().unwrap()],
        "a kmeans model file, not a segment model",
    );
    check(
        &["--features", "frequency,monetary,frequency"],
        "feature \"frequency\" is named more than once",
    );
    // Column options are trimmed like the header's names.
    segmenta()
        .args(base(&[
            "--customer-col",
            " customer_id ",
            "--max-bad-rows",
            "0.5",
            "--k",
            "2",
        ]))
        .assert()
        .success();
    fails_with(
        &[
            "segment",
            "--transactions",
            "/nonexistent/log.csv",
            "--out",
            out.to_str().unwrap(),
        ],
        "cannot read",
    );
}

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let mut rows = vec![r.headers().unwrap().iter().map(String::from).collect()];
    rows.extend(
        r.records()
            .map(|rec| rec.unwrap().iter().map(String::from).collect()),
    );
    rows
}

#[test]
fn a_saved_kmeans_model_assigns_offline_as_the_fit_did() {
    let dir = TempDir::new().unwrap();
    let model = dir.path().join("km.json");
    let labels = dir.path().join("labels.csv");
    let assigned = dir.path().join("assigned.csv");
    let input = example();
    let v = json_of(&[
        "kmeans",
        "--input",
        input.to_str().unwrap(),
        "--columns",
        "recency_days,monetary,frequency",
        "--k",
        "4",
        "--standardize",
        "--backend",
        "cpu",
        "--json",
        "--save-model",
        model.to_str().unwrap(),
        "--labels-out",
        labels.to_str().unwrap(),
    ]);
    assert_eq!(v["converged"], true);
    segmenta()
        .args([
            "assign",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--id-col",
            "tenure_days",
            "--backend",
            "cpu",
            "--out",
            assigned.to_str().unwrap(),
        ])
        .assert()
        .success();
    let fit = read_csv(&labels);
    let offline = read_csv(&assigned);
    assert_eq!(offline[0], ["tenure_days", "label", "distance", "margin"]);
    assert_eq!(fit.len(), offline.len());
    let source = read_csv(&input);
    for i in 1..fit.len() {
        assert_eq!(fit[i][1], offline[i][1], "row {i}: the same label");
        assert_eq!(
            offline[i][0], source[i][4],
            "row {i}: keyed by the id column"
        );
    }
    // A PCA model is refused by name.
    let pca = dir.path().join("pca.json");
    segmenta()
        .args([
            "pca",
            "--input",
            input.to_str().unwrap(),
            "--n-components",
            "2",
        ])
        .args(["--backend", "cpu", "--save-model", pca.to_str().unwrap()])
        .assert()
        .success();
    fails_with(
        &[
            "assign",
            "--model",
            pca.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "holds a PCA model; this command needs a k-means model",
    );
    let garbage = write(&dir, "garbage.json", "{\"format\": \"other\"}");
    fails_with(
        &[
            "assign",
            "--model",
            garbage.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "is not a Segmenta model file",
    );
    let newer = write(
        &dir,
        "newer.json",
        "{\"format\": \"segmenta-model\", \"version\": 99, \"kind\": \"kmeans\"}",
    );
    fails_with(
        &[
            "assign",
            "--model",
            newer.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        "version 99 model file",
    );
}

#[test]
fn max_iter_reached_is_not_called_converged() {
    let input = example();
    let args = [
        "kmeans",
        "--input",
        input.to_str().unwrap(),
        "--k",
        "6",
        "--max-iter",
        "1",
    ];
    let v = json_of(&[&args[..], &["--backend", "cpu", "--json"]].concat());
    assert_eq!(v["converged"], false);
    assert_eq!(v["n_iter"], 1);
    segmenta()
        .args(args)
        .args(["--backend", "cpu"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "stopped at max_iter = 1 before converging",
        ))
        .stdout(predicate::str::contains("converged after").not());
}

#[test]
fn pca_transforms_and_inverts_from_the_cli() {
    let dir = TempDir::new().unwrap();
    let input = example();
    let model = dir.path().join("pca.json");
    let projected = dir.path().join("pc.csv");
    let back = dir.path().join("back.csv");
    let cols = "recency_days,frequency,monetary";
    segmenta()
        .args(["pca", "--input", input.to_str().unwrap(), "--columns", cols])
        .args(["--n-components", "3", "--backend", "cpu", "--save-model"])
        .args([
            model.to_str().unwrap(),
            "--transform-out",
            projected.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert_eq!(read_csv(&projected)[0], ["row", "pc1", "pc2", "pc3"]);
    segmenta()
        .args(["pca", "--model", model.to_str().unwrap(), "--input"])
        .args([projected.to_str().unwrap(), "--inverse", "--transform-out"])
        .args([back.to_str().unwrap(), "--backend", "cpu"])
        .assert()
        .success();
    let (original, restored) = (read_csv(&input), read_csv(&back));
    assert_eq!(
        restored[0],
        ["row", "recency_days", "frequency", "monetary"]
    );
    assert_eq!(original.len(), restored.len());
    for i in 1..original.len() {
        for (j, c) in [0usize, 1, 2].iter().enumerate() {
            let want: f64 = original[i][*c].parse().unwrap();
            let got: f64 = restored[i][j + 1].parse().unwrap();
            // All components kept: the round trip is exact up to f32
            // rounding of values in the thousands (relative 1e-5).
            assert!(
                (want - got).abs() <= 1e-5 * want.abs().max(100.0),
                "row {i} col {c}: {want} vs {got}"
            );
        }
    }
}

#[test]
fn score_reproduces_the_segments_of_the_run_that_saved_the_model() {
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("log.csv");
    segmenta::segmentation::demo::write_demo_log(&log, 1_500, 5).unwrap();
    let out = dir.path().join("run");
    let common = [
        "--order-col",
        "order_id",
        "--as-of",
        "2026-01-20",
        "--backend",
        "cpu",
    ];
    segmenta()
        .args([
            "segment",
            "--transactions",
            log.to_str().unwrap(),
            "--k",
            "4",
        ])
        .args(["--out", out.to_str().unwrap()])
        .args(common)
        .assert()
        .success();
    let scored = dir.path().join("scored.csv");
    segmenta()
        .args(["score", "--model", out.to_str().unwrap(), "--transactions"])
        .args([log.to_str().unwrap(), "--out", scored.to_str().unwrap()])
        .args(common)
        .assert()
        .success();
    // Customers' ids and segments: the new file is its owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&scored).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let table = read_csv(&out.join("customers.csv"));
    let col = |name: &str| table[0].iter().position(|c| c == name).unwrap();
    let (id, segment) = (col("customer_id"), col("segment"));
    let want: std::collections::HashMap<&str, &str> = table[1..]
        .iter()
        .map(|r| (r[id].as_str(), r[segment].as_str()))
        .collect();
    let got = read_csv(&scored);
    assert_eq!(
        got[0],
        [
            "customer_id",
            "segment",
            "description",
            "distance",
            "margin"
        ]
    );
    assert_eq!(got.len(), table.len());
    let segments: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("segments.json")).unwrap()).unwrap();
    for r in &got[1..] {
        assert_eq!(want[r[0].as_str()], r[1], "customer {}", r[0]);
        let s: usize = r[1].parse().unwrap();
        assert_eq!(segments["segments"][s]["description"], r[2].as_str());
    }

    // The model counted orders: the log read without its order column
    // (purchase days) would silently move customers, so it is refused.
    segmenta()
        .args(["score", "--model", out.to_str().unwrap(), "--transactions"])
        .args([log.to_str().unwrap(), "--out", scored.to_str().unwrap()])
        .args(&common[2..])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the model's frequency counts distinct orders, and this log's counts distinct purchase days",
        ))
        .stderr(predicate::str::contains("--order-col"));
    // So is a refresh.
    segmenta()
        .args(["segment", "--transactions", log.to_str().unwrap()])
        .args(["--previous", out.join("model.json").to_str().unwrap()])
        .args(["--out", dir.path().join("again").to_str().unwrap()])
        .args(&common[2..])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the model's frequency counts distinct orders",
        ));
}

/// Spend is money: the customer table must reconcile with the books, cent
/// for cent, however large the totals (f32 kept 300000 for 300000.01 and
/// 123456792 for 123456789).
#[test]
fn customer_tables_keep_spend_to_the_cent() {
    let dir = TempDir::new().unwrap();
    let mut log = String::from("customer_id,date,amount\n");
    for c in 0..20 {
        log.push_str(&format!(
            "c{c},2025-0{}-1{},{}.25\n",
            1 + c % 9,
            c % 10,
            10 + c
        ));
    }
    log.push_str("P,2025-01-01,300000.01\nQ,2025-01-02,123456789\nQ,2025-03-02,0.01\n");
    // Binary sums of decimal amounts: 12.50 + 7.30 + 0.10 is
    // 19.900000000000002 in f64, 0.1 + 0.2 is 0.30000000000000004.
    log.push_str("R,2025-01-05,12.50\nR,2025-01-05,7.30\nR,2025-01-05,0.10\n");
    log.push_str("S,2025-01-06,0.1\nS,2025-02-06,0.2\n");
    let path = write(&dir, "log.csv", &log);
    let out = dir.path().join("out");
    segmenta()
        .args([
            "segment",
            "--transactions",
            path.to_str().unwrap(),
            "--k",
            "2",
        ])
        .args(["--backend", "cpu", "--out", out.to_str().unwrap()])
        .assert()
        .success();
    let table = read_csv(&out.join("customers.csv"));
    let monetary = table[0].iter().position(|c| c == "monetary").unwrap();
    let aov = table[0]
        .iter()
        .position(|c| c == "avg_order_value")
        .unwrap();
    let row = |id: &str| table.iter().find(|r| r[0] == id).unwrap().clone();
    assert_eq!(row("P")[monetary], "300000.01");
    assert_eq!(row("Q")[monetary], "123456789.01");
    assert_eq!(row("Q")[aov], "61728394.505");
    assert_eq!(row("c3")[monetary], "13.25");
    assert_eq!(row("R")[monetary], "19.9");
    assert_eq!(row("S")[monetary], "0.3");
    assert_eq!(row("S")[aov], "0.15");
}
