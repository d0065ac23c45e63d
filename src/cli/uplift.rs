//! `segmenta uplift`: what a campaign did, treated against control.

use std::path::PathBuf;

use clap::Args;

use super::output::table;
use segmenta::experiment::report::write_uplift;
use segmenta::experiment::{measure, Uplift};

#[derive(Debug, Args)]
pub struct UpliftArgs {
    /// The customer table of a `segment --holdout-share` run
    /// (customers.csv: customer_id, segment, group).
    #[arg(long)]
    pub assignments: PathBuf,
    /// The campaign's outcomes, CSV: customer_id, converted (0/1), revenue.
    /// Assigned customers without a row count as not converted.
    #[arg(long)]
    pub outcomes: PathBuf,
    /// Where uplift.html, uplift.png and uplift.json go (default: nothing
    /// is written).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Revenue is written 12,50 and 1.234,50 (the delimiter is sniffed
    /// from the header either way).
    #[arg(long)]
    pub decimal_comma: bool,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn relative(i: Option<segmenta::experiment::Interval>) -> String {
    i.map_or("–".into(), |r| {
        format!(
            "{:+.1}% [{:+.1}, {:+.1}]",
            r.estimate * 100.0,
            r.low * 100.0,
            r.high * 100.0
        )
    })
}

fn row(u: &Uplift) -> Vec<String> {
    let pp = |v: f64| format!("{:+.2}", v * 100.0);
    vec![
        u.label(),
        u.treatment.customers.to_string(),
        u.control.customers.to_string(),
        format!(
            "{:.2}% / {:.2}%",
            u.treatment.conversion_rate * 100.0,
            u.control.conversion_rate * 100.0
        ),
        format!(
            "{} [{}, {}]",
            pp(u.conversion.estimate),
            pp(u.conversion.low),
            pp(u.conversion.high)
        ),
        relative(u.conversion_relative),
        format!("{:.4}", u.conversion_p_value),
        format!(
            "{:+.2} [{:+.2}, {:+.2}]",
            u.revenue.estimate, u.revenue.low, u.revenue.high
        ),
        relative(u.revenue_relative),
        format!("{:.4}", u.revenue_p_value),
    ]
}

pub fn run(args: UpliftArgs) -> anyhow::Result<()> {
    let report = measure(&args.assignments, &args.outcomes, args.decimal_comma)?;
    let files = args
        .out
        .as_deref()
        .map(|dir| write_uplift(&report, dir))
        .transpose()?;
    if args.json {
        let mut v = serde_json::to_value(&report).expect("serialisable");
        v["files"] = serde_json::json!(files);
        println!("{v}");
        return Ok(());
    }
    print_report(&report)?;
    if let Some(f) = files {
        println!("report: {}", f.html.display());
    }
    Ok(())
}

/// The uplift per segment and overall, as a table; warnings on stderr.
pub fn print_report(report: &segmenta::experiment::UpliftReport) -> std::io::Result<()> {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let header = [
        "segment",
        "treated",
        "control",
        "conversion T / C",
        "uplift, pp [95 %]",
        "relative",
        "p",
        "revenue/customer uplift [95 %]",
        "relative",
        "p",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = report
        .segments
        .iter()
        .chain([&report.overall])
        .map(row)
        .collect();
    say!("{}", table(&header, &rows).trim_end_matches('\n'));
    Ok(())
}
