//! Real exports: delimiters, decimal commas, currency symbols, thousands
//! separators, day-first and month-first dates, BOM and CRLF, Parquet text
//! columns — each read to the same features as a plain ISO file, and every
//! unreadable file named with what would read it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use segmenta::backend::cpu::CpuBackend;
use segmenta::data::{read_table_limited, Delimiter, ReadLimits, TextFormat};
use segmenta::segmentation::features::customer_features;
use segmenta::segmentation::transactions::{
    read_transactions_as, BadRowPolicy, TransactionColumns,
};
use segmenta::segmentation::{run_segmentation, SegmentControl, SegmentParams, SegmentationError};
use segmenta::Error;
use tempfile::TempDir;

/// One log, as (customer, year, month, day, amount): days above 12 occur,
/// so day-first and month-first files settle their order.
fn lines() -> Vec<(String, i32, u32, u32, f64)> {
    (0..240)
        .map(|i| {
            (
                format!("C{}", i % 40),
                2025,
                1 + (i % 12) as u32,
                1 + (i * 7 % 28) as u32,
                1234.5 * ((i % 9) as f64 + 0.25),
            )
        })
        .collect()
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn iso(dir: &TempDir) -> PathBuf {
    let mut t = String::from("customer_id,date,amount\n");
    for (c, y, m, d, a) in lines() {
        t += &format!("{c},{y}-{m:02}-{d:02},{a:.2}\n");
    }
    write(dir, "iso.csv", t.as_bytes())
}

/// `1234.5` as `1.234,50` (decimal comma, point groups).
fn european(a: f64) -> String {
    let cents = format!("{a:.2}");
    let (int, frac) = cents.split_once('.').unwrap();
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push('.');
        }
        grouped.push(ch);
    }
    format!("{grouped},{frac}")
}

fn features(path: &Path, format: &TextFormat) -> Vec<Vec<f64>> {
    let log = read_transactions_as(
        path,
        &TransactionColumns::default(),
        format,
        BadRowPolicy::Reject,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = customer_features(&log, None).unwrap();
    let mut rows: Vec<(String, Vec<f64>)> = f
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), f.values.row(i).to_vec()))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|r| r.1).collect()
}

#[test]
fn every_export_style_reads_to_the_same_features() {
    let dir = TempDir::new().unwrap();
    let want = features(&iso(&dir), &TextFormat::default());
    let comma = TextFormat {
        decimal_comma: true,
        ..Default::default()
    };

    // A spreadsheet in a European locale: BOM, semicolons, CRLF,
    // DD/MM/YYYY, "1.234,50 €" quoted.
    let mut eu = b"\xEF\xBB\xBF".to_vec();
    eu.extend_from_slice(b"customer_id;date;amount\r\n");
    for (c, y, m, d, a) in lines() {
        eu.extend(format!("{c};{d:02}/{m:02}/{y};\"{} \u{20ac}\"\r\n", european(a)).bytes());
    }
    let eu = write(&dir, "eu.csv", &eu);
    assert_eq!(
        features(&eu, &comma),
        want,
        "semicolons, decimal comma, day first"
    );

    // A US shop system: MM/DD/YYYY with a time, "$1,234.50" quoted.
    let mut us = String::from("customer_id,date,amount\n");
    for (c, y, m, d, a) in lines() {
        let grouped = european(a)
            .replace('.', "_")
            .replace(',', ".")
            .replace('_', ",");
        us += &format!("{c},{m}/{d}/{y} 10:30,\"${grouped}\"\n");
    }
    let us = write(&dir, "us.csv", us.as_bytes());
    assert_eq!(
        features(&us, &TextFormat::default()),
        want,
        "month first, $ and thousands"
    );

    // Tab-separated with a .tsv name, and pipe-separated with a .txt name.
    for (name, sep) in [("log.tsv", '\t'), ("log.txt", '|')] {
        let mut t = format!("customer_id{sep}date{sep}amount\n");
        for (c, y, m, d, a) in lines() {
            t += &format!("{c}{sep}{y}-{m:02}-{d:02}{sep} {a:.2} \n");
        }
        let p = write(&dir, name, t.as_bytes());
        assert_eq!(features(&p, &TextFormat::default()), want, "{name}");
    }

    // An explicit format: dotted German dates.
    let mut de = String::from("customer_id;date;amount\n");
    for (c, y, m, d, a) in lines() {
        de += &format!("{c};{d}.{m}.{y};{}\n", european(a));
    }
    let de = write(&dir, "de.csv", de.as_bytes());
    let de_format = TextFormat {
        delimiter: Some(Delimiter::Semicolon),
        decimal_comma: true,
        date_format: Some("%d.%m.%Y".into()),
    };
    assert_eq!(features(&de, &de_format), want, "given date format");

    // Parquet with every column as text: parsed like CSV fields.
    let l = lines();
    let batch = RecordBatch::try_from_iter([
        (
            "customer_id",
            Arc::new(StringArray::from_iter_values(l.iter().map(|r| r.0.clone()))) as _,
        ),
        (
            "date",
            Arc::new(StringArray::from_iter_values(
                l.iter().map(|(_, y, m, d, _)| format!("{d:02}/{m:02}/{y}")),
            )) as _,
        ),
        (
            "amount",
            Arc::new(StringArray::from_iter_values(
                l.iter().map(|r| european(r.4)),
            )) as _,
        ),
    ])
    .unwrap();
    let pq = dir.path().join("text.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    assert_eq!(features(&pq, &comma), want, "Parquet text columns");
}

fn segment(path: &Path, format: TextFormat) -> Result<segmenta::segmentation::SegmentRun, Error> {
    let params = SegmentParams {
        format,
        k: Some(segmenta::segmentation::KChoice::Fixed(2)),
        ..Default::default()
    };
    run_segmentation(
        &CpuBackend::new(),
        path,
        &params,
        None,
        &SegmentControl::default(),
    )
}

#[test]
fn unreadable_files_say_why_and_what_would_read_them() {
    let dir = TempDir::new().unwrap();
    // Decimal commas without the option: every row unreadable.
    let mut t = String::from("customer_id;date;amount\n");
    for (c, y, m, d, a) in lines() {
        t += &format!("{c};{y}-{m:02}-{d:02};{}\n", european(a));
    }
    let p = write(&dir, "comma.csv", t.as_bytes());
    let e = segment(&p, TextFormat::default()).unwrap_err().to_string();
    assert!(
        e.starts_with("none of the 240 rows could be read: 240 with an unreadable amount"),
        "{e}"
    );
    assert!(e.contains("row 1, column \"amount\""), "{e}");
    assert!(e.contains("pass --decimal-comma"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // 10 % of the amounts with a decimal comma: over the 1 % default.
    let mut t = String::from("customer_id,date,amount\n");
    for (i, (c, y, m, d, a)) in lines().into_iter().enumerate() {
        let amount = if i % 10 == 3 {
            format!("\"{}\"", format!("{a:.2}").replace('.', ","))
        } else {
            format!("{a:.2}")
        };
        t += &format!("{c},{y}-{m:02}-{d:02},{amount}\n");
    }
    let p = write(&dir, "some.csv", t.as_bytes());
    let e = segment(&p, TextFormat::default()).unwrap_err();
    let Error::Segmentation(SegmentationError::TooManyBadRows { bad, rows, .. }) = &e else {
        panic!("{e}");
    };
    assert_eq!((*bad, *rows), (24, 240));
    let text = e.to_string();
    assert!(
        text.contains("24 of 240 rows (10.0 %) could not be read, more than the 1 % allowed"),
        "{text}"
    );
    assert!(text.contains("pass --decimal-comma"), "{text}");
    // Allowed with a higher threshold; the counts are in the run.
    let params = SegmentParams {
        max_bad_rows: 0.2,
        k: Some(segmenta::segmentation::KChoice::Fixed(2)),
        ..Default::default()
    };
    let run = run_segmentation(
        &CpuBackend::new(),
        &p,
        &params,
        None,
        &SegmentControl::default(),
    )
    .unwrap();
    assert_eq!(run.input.bad_rows.total, 24);
    assert!(run
        .input
        .bad_rows
        .summary(true)
        .starts_with("24 with an unreadable amount"));

    // Dates no day above 12 can settle.
    let mut t = String::from("customer_id,date,amount\n");
    for (c, y, m, d, a) in lines() {
        t += &format!("{c},{:02}/{m:02}/{y},{a:.2}\n", d.min(12));
    }
    let p = write(&dir, "ambiguous.csv", t.as_bytes());
    let e = segment(&p, TextFormat::default()).unwrap_err().to_string();
    assert!(e.contains("can be day-first or month-first"), "{e}");
    assert!(
        e.contains("--date-format %d/%m/%Y or --date-format %m/%d/%Y"),
        "{e}"
    );
    let given = TextFormat {
        date_format: Some("%m/%d/%Y".into()),
        ..Default::default()
    };
    assert!(segment(&p, given).is_ok());

    // A wrong delimiter given explicitly: the header names the right one.
    let p = write(
        &dir,
        "semi.csv",
        b"customer_id;date;amount\nC1;2025-01-01;3\n",
    );
    let wrong = TextFormat {
        delimiter: Some(Delimiter::Comma),
        ..Default::default()
    };
    let e = segment(&p, wrong).unwrap_err().to_string();
    assert!(e.contains("try --delimiter ';'"), "{e}");
    // Sniffed, it reads.
    assert!(segment(&p, TextFormat::default()).is_err_and(|e| e.to_string().contains("too few")));
}

#[test]
fn numeric_tables_take_the_same_formats() {
    let dir = TempDir::new().unwrap();
    let p = write(
        &dir,
        "x.tsv",
        "a\tb\r\n1,5\t\"1.000,25\"\r\n-2\t3\r\n".as_bytes(),
    );
    let format = TextFormat {
        decimal_comma: true,
        ..Default::default()
    };
    let d = read_table_limited(&p, &[], &format, ReadLimits::NONE).unwrap();
    assert_eq!(d.columns, ["a", "b"]);
    assert_eq!(d.values.as_slice().unwrap(), &[1.5, 1000.25, -2.0, 3.0]);
    let e = read_table_limited(&p, &[], &TextFormat::default(), ReadLimits::NONE).unwrap_err();
    assert!(e.to_string().contains("pass --decimal-comma"), "{e}");
}
