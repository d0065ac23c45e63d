//! `uplift.html`: the uplift per segment and overall, a table and a chart
//! of the conversion uplift with its 95 % intervals.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::{Uplift, UpliftReport};
use crate::error::Result;
use crate::segmentation::output::write_atomic;
use crate::segmentation::report::{
    draw_chart, escape, register_font, Area, Chart, CHART_FONT, REPORT_STYLE,
};

/// Where the page went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpliftFiles {
    pub html: PathBuf,
    pub chart: PathBuf,
    pub json: PathBuf,
}

/// Writes `uplift.html`, `uplift.png` and `uplift.json` into `dir`.
pub fn write_uplift(report: &UpliftReport, dir: &Path) -> Result<UpliftFiles> {
    crate::segmentation::create_private_dir_all(dir)
        .map_err(|e| crate::segmentation::SegmentationError::output(dir, e))?;
    let chart = Chart {
        file: "uplift.png",
        title: "Conversion uplift (treated − control), with 95 % intervals",
    };
    let strata: Vec<&Uplift> = report.segments.iter().chain([&report.overall]).collect();
    register_font();
    draw_chart(dir, &chart, |a| uplift_chart(a, &strata, chart.title))?;
    let files = UpliftFiles {
        html: dir.join("uplift.html"),
        chart: dir.join(chart.file),
        json: dir.join("uplift.json"),
    };
    write_atomic(&files.html, html(report, &chart).as_bytes())?;
    let json = serde_json::to_vec_pretty(report).expect("serialisable");
    write_atomic(&files.json, &json)?;
    Ok(files)
}

fn pct(v: f64) -> String {
    format!("{:+.2} pp", v * 100.0)
}

fn html(report: &UpliftReport, chart: &Chart) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Campaign uplift</title>\
         <style>{REPORT_STYLE}</style></head><body>\n<h1>Campaign uplift</h1>\n\
         <p>{} customers: {} treated, {} in the control group.</p>\n",
        report.customers, report.overall.treatment.customers, report.overall.control.customers
    );
    h.push_str(
        "<table><tr><th>segment</th><th>treated</th><th>control</th><th>conversion treated / control</th>\
         <th>uplift (95 % interval)</th><th>relative</th><th>p</th><th>revenue per customer treated / control</th>\
         <th>uplift (95 % interval)</th><th>relative</th><th>p</th></tr>\n",
    );
    let relative = |i: Option<super::Interval>| {
        i.map_or("–".to_string(), |r| {
            format!(
                "{:+.1} % ({:+.1} to {:+.1})",
                r.estimate * 100.0,
                r.low * 100.0,
                r.high * 100.0
            )
        })
    };
    for u in report.segments.iter().chain([&report.overall]) {
        let rel = relative(u.conversion_relative);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2} % / {:.2} %</td><td>{} ({} to {})</td><td>{}</td><td>{:.4}</td>\
             <td>{:.2} / {:.2}</td><td>{:+.2} ({:+.2} to {:+.2})</td><td>{}</td><td>{:.4}</td></tr>",
            escape(&u.label()),
            u.treatment.customers,
            u.control.customers,
            u.treatment.conversion_rate * 100.0,
            u.control.conversion_rate * 100.0,
            pct(u.conversion.estimate),
            pct(u.conversion.low),
            pct(u.conversion.high),
            rel,
            u.conversion_p_value,
            u.treatment.revenue_per_customer,
            u.control.revenue_per_customer,
            u.revenue.estimate,
            u.revenue.low,
            u.revenue.high,
            relative(u.revenue_relative),
            u.revenue_p_value
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<h2>{title}</h2>\n<img src=\"{file}\" alt=\"{title}\">",
        title = escape(chart.title),
        file = chart.file
    );
    h.push_str(
        "<p class=\"note\">Conversion: difference of rates with Newcombe's score interval, two-proportion z-test. \
         Revenue per customer: Welch's t-test. Relative uplift: delta method. pp: percentage points.</p>\n",
    );
    for w in &report.warnings {
        let _ = writeln!(h, "<p class=\"note\">Warning: {}</p>", escape(w));
    }
    h.push_str("</body></html>\n");
    h
}

fn uplift_chart(a: &Area, strata: &[&Uplift], title: &str) -> std::result::Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let (lo, hi) = strata.iter().fold((0.0f64, 0.0f64), |(l, h), u| {
        let (a, b) = (u.conversion.low, u.conversion.high);
        (
            if a.is_finite() { l.min(a) } else { l },
            if b.is_finite() { h.max(b) } else { h },
        )
    });
    let pad = ((hi - lo) * 0.1).max(1e-4);
    let n = strata.len();
    let mut chart = ChartBuilder::on(a)
        .caption(title, (CHART_FONT, 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, (lo - pad) * 100.0..(hi + pad) * 100.0)
        .map_err(|e| s(&e))?;
    let names: Vec<String> = strata.iter().map(|u| u.stratum.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("segment")
        .y_desc("conversion uplift, percentage points")
        .label_style((CHART_FONT, 13))
        .draw()
        .map_err(|e| s(&e))?;
    chart
        .draw_series(LineSeries::new(
            [(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| s(&e))?;
    for (i, u) in strata.iter().enumerate() {
        let x = i as f64;
        let colour = if u.conversion.low > 0.0 {
            RGBColor(44, 160, 44)
        } else if u.conversion.high < 0.0 {
            RGBColor(214, 39, 40)
        } else {
            RGBColor(127, 127, 127)
        };
        if u.conversion.low.is_finite() && u.conversion.high.is_finite() {
            chart
                .draw_series(LineSeries::new(
                    [
                        (x, u.conversion.low * 100.0),
                        (x, u.conversion.high * 100.0),
                    ],
                    colour.stroke_width(3),
                ))
                .map_err(|e| s(&e))?;
        }
        chart
            .draw_series([Circle::new(
                (x, u.conversion.estimate * 100.0),
                6,
                colour.filled(),
            )])
            .map_err(|e| s(&e))?;
    }
    Ok(())
}
