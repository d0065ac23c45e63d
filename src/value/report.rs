//! `clv.html`: the value job as a page: the fitted models, value tiers and
//! churn risk, the `P(alive)` histogram and, with a holdout, the paper's
//! check of predicted against actual purchases (Fader, Hardie & Lee 2005,
//! Figure 4).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::job::{ClvRun, HoldoutCheck};
use super::{ChurnRisk, ValueTier};
use crate::error::Result;
use crate::segmentation::report::{
    draw_chart, escape, p_alive_histogram, register_font, remove_stale_charts, Area, Chart,
    CHART_FONT, REPORT_STYLE,
};

const ALIVE: Chart = Chart {
    file: "p_alive.png",
    title: "P(alive): customers by probability of still buying",
};
const HOLDOUT: Chart = Chart {
    file: "holdout.png",
    title: "Holdout purchases by calibration repeat purchases: predicted and actual",
};

/// Draws the charts into `dir` and returns the page and the charts drawn.
pub(super) fn write_report(run: &ClvRun, dir: &Path) -> Result<(String, Vec<Chart>)> {
    register_font();
    let s = &run.summary;
    draw_chart(dir, &ALIVE, |a| {
        p_alive_histogram(a, &run.scores.p_alive, &s.churn_thresholds, ALIVE.title)
    })?;
    let mut charts = vec![ALIVE];
    if let Some(h) = &s.holdout {
        draw_chart(dir, &HOLDOUT, |a| holdout_chart(a, h, HOLDOUT.title))?;
        charts.push(HOLDOUT);
    }
    remove_stale_charts(dir, &charts, &[ALIVE.file, HOLDOUT.file])?;
    Ok((html(run, &charts), charts))
}

fn html(run: &ClvRun, charts: &[Chart]) -> String {
    let s = &run.summary;
    let unit = s.time_unit.name();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Customer value — {end}</title><style>{REPORT_STYLE}</style></head><body>\n\
         <h1>Customer lifetime value as of {end}</h1>\n\
         <p>{n} customers, {rep} with a repeat purchase; times in {unit}s. \
         Value over the next {hz} {unit}s, discounted at {rate} per {unit}: {total:.2} in all.</p>\n",
        end = s.calibration_end,
        n = s.n_customers,
        rep = s.n_repeat_customers,
        hz = s.horizon,
        rate = s.discount_rate,
        total = s.total_clv,
    );
    models_table(&mut h, run);
    tiers_table(&mut h, run);
    risk_table(&mut h, run);
    if let Some(hold) = &s.holdout {
        holdout_table(&mut h, hold, unit);
    }
    for chart in charts {
        let _ = writeln!(
            h,
            "<h2>{title}</h2>\n<img src=\"{file}\" alt=\"{title}\">",
            title = escape(chart.title),
            file = chart.file
        );
    }
    if s.bad_rows.total > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">{} of {} rows were left out as unreadable: {}</p>",
            s.bad_rows.total,
            s.rows_read,
            escape(&s.bad_rows.summary(false))
        );
    }
    for w in &s.warnings {
        let _ = writeln!(h, "<p class=\"note\">Warning: {}</p>", escape(w));
    }
    h.push_str(
        "<p class=\"note\">BG/NBD (Fader, Hardie &amp; Lee 2005) for purchases, Gamma-Gamma for \
         spend per purchase, both fitted by maximum likelihood; standard errors from the observed \
         information. A purchase is a day with a purchase.</p>\n</body></html>\n",
    );
    h
}

fn models_table(h: &mut String, run: &ClvRun) {
    let b = &run.summary.bgnbd;
    let g = &run.summary.gamma_gamma;
    h.push_str(
        "<h2>Fitted models</h2>\n<table><tr><th class=\"l\">model</th><th class=\"l\">parameter</th>\
         <th>estimate</th><th>std. error</th></tr>\n",
    );
    let rows = [
        ("BG/NBD", "r", b.r, b.std_errors.r),
        ("BG/NBD", "alpha", b.alpha, b.std_errors.alpha),
        ("BG/NBD", "a", b.a, b.std_errors.a),
        ("BG/NBD", "b", b.b, b.std_errors.b),
        ("Gamma-Gamma", "p", g.p, g.std_errors.p),
        ("Gamma-Gamma", "q", g.q, g.std_errors.q),
        ("Gamma-Gamma", "v", g.v, g.std_errors.v),
    ];
    for (model, name, v, se) in rows {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{model}</td><td class=\"l\">{name}</td><td>{v:.6}</td><td>{se:.6}</td></tr>"
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<p class=\"note\">BG/NBD: log-likelihood {:.3} after {} iterations (gradient norm {:.2e}). \
         Gamma-Gamma: log-likelihood {:.3} on {} customers after {} iterations; frequency and mean spend \
         correlate at {:.3}.</p>",
        b.log_likelihood,
        b.iterations,
        b.gradient_norm,
        g.log_likelihood,
        g.customers_fitted,
        g.iterations,
        g.frequency_spend_correlation
    );
}

fn tiers_table(h: &mut String, run: &ClvRun) {
    let total = run.summary.total_clv;
    h.push_str(
        "<h2>Value tiers</h2>\n<table><tr><th class=\"l\">tier</th><th>customers</th>\
         <th>predicted value</th><th>share of value</th></tr>\n",
    );
    for tier in [
        ValueTier::Top1,
        ValueTier::Top10,
        ValueTier::Top50,
        ValueTier::Rest,
    ] {
        let (n, value) = run
            .scores
            .value_tier
            .iter()
            .zip(&run.scores.clv)
            .filter(|(t, _)| **t == tier)
            .fold((0usize, 0.0f64), |(n, v), (_, c)| (n + 1, v + c));
        let share = if total > 0.0 { value / total } else { 0.0 };
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{n}</td><td>{value:.2}</td><td>{:.1} %</td></tr>",
            escape(tier.name()),
            share * 100.0
        );
    }
    h.push_str("</table>\n");
}

fn risk_table(h: &mut String, run: &ClvRun) {
    let t = &run.summary.churn_thresholds;
    let _ = writeln!(
        h,
        "<h2>Churn risk</h2>\n<p>High below P(alive) {}, medium below {}.</p>\n\
         <table><tr><th class=\"l\">risk</th><th>customers</th><th>predicted value</th></tr>",
        t.high, t.medium
    );
    for risk in [ChurnRisk::High, ChurnRisk::Medium, ChurnRisk::Low] {
        let (n, value) = run
            .scores
            .churn_risk
            .iter()
            .zip(&run.scores.clv)
            .filter(|(r, _)| **r == risk)
            .fold((0usize, 0.0f64), |(n, v), (_, c)| (n + 1, v + c));
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{n}</td><td>{value:.2}</td></tr>",
            risk.name()
        );
    }
    h.push_str("</table>\n");
}

fn holdout_table(h: &mut String, hold: &HoldoutCheck, unit: &str) {
    let _ = writeln!(
        h,
        "<h2>Holdout check</h2>\n<p>From the calibration end to {} ({:.1} {unit}s): {:.1} purchases \
         predicted, {} made; mean absolute error {:.3} purchases per customer.</p>\n\
         <table><tr><th>calibration repeat purchases</th><th>customers</th>\
         <th>mean predicted</th><th>mean actual</th></tr>",
        hold.holdout_end, hold.length, hold.total_predicted, hold.total_actual, hold.mae
    );
    for b in &hold.by_repeat_purchases {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape(&b.repeat_purchases),
            b.customers,
            b.mean_predicted,
            b.mean_actual
        );
    }
    h.push_str("</table>\n");
}

/// The paper's Figure 4: per number of calibration repeat purchases, the
/// mean of predicted and of actual holdout purchases, as two lines.
fn holdout_chart(a: &Area, hold: &HoldoutCheck, title: &str) -> std::result::Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let buckets = &hold.by_repeat_purchases;
    let n = buckets.len().max(1);
    let top = buckets
        .iter()
        .flat_map(|b| [b.mean_predicted, b.mean_actual])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(a)
        .caption(title, (CHART_FONT, 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)
        .map_err(|e| s(&e))?;
    let names: Vec<String> = buckets.iter().map(|b| b.repeat_purchases.clone()).collect();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("repeat purchases in the calibration period")
        .y_desc("mean purchases in the holdout")
        .label_style((CHART_FONT, 13))
        .draw()
        .map_err(|e| s(&e))?;
    let predicted = RGBColor(31, 119, 180);
    let actual = RGBColor(214, 39, 40);
    for (colour, label, pick) in [(predicted, "predicted", true), (actual, "actual", false)] {
        let points: Vec<(f64, f64)> = buckets
            .iter()
            .enumerate()
            .filter(|(_, b)| b.customers > 0)
            .map(|(i, b)| {
                let y = if pick {
                    b.mean_predicted
                } else {
                    b.mean_actual
                };
                (i as f64, y)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(3)))
            .map_err(|e| s(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))
            .map_err(|e| s(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((CHART_FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| s(&e))?;
    Ok(())
}
