//! The HTML report: one page with the charts (PNG files next to it), the
//! segment profiles, the choice of k and, after a refresh, who moved where.

mod charts;

use std::fmt::Write;

pub(crate) use charts::{
    draw as draw_chart, p_alive_histogram, register_font, Area, FONT as CHART_FONT,
};
pub use charts::{remove_stale_charts, segment_colour, write_charts, Chart, SEGMENT_CHARTS};
pub(crate) use STYLE as REPORT_STYLE;

use super::features::FEATURE_NAMES;
use super::rfm::RfmSegment;
use super::SegmentRun;

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#222}\
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}\
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:50%;margin-right:.4em;vertical-align:middle}\
.note{color:#555;font-size:.9rem}";

/// Renders the report; `charts` are the files [`write_charts`] wrote next to it.
pub fn html(run: &SegmentRun, charts: &[Chart]) -> String {
    let mut h = String::new();
    let n = run.customers.ids.len();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Segmenta report — {as_of}</title>\
         <style>{STYLE}</style></head><body>\n<h1>Customer segments as of {as_of}</h1>\n\
         <p>{n} customers in {k} segments, clustered on {backend} ({adapter}). \
         Features are log1p-transformed where skewed, then standardised; profiles are in original units.</p>\n",
        as_of = run.model.as_of,
        k = run.model.k(),
        backend = run.backend.backend,
        adapter = escape(&run.backend.adapter),
    );
    segments_table(&mut h, run);
    value_table(&mut h, run);
    for chart in charts {
        let _ = writeln!(
            h,
            "<h2>{title}</h2>\n<img src=\"{file}\" alt=\"{title}\">",
            title = escape(chart.title),
            file = chart.file
        );
    }
    sweep_table(&mut h, run);
    refresh_tables(&mut h, run);
    input_notes(&mut h, run);
    rfm_rules(&mut h);
    h.push_str("</body></html>\n");
    h
}

fn segments_table(h: &mut String, run: &SegmentRun) {
    h.push_str("<h2>Segments</h2>\n<table><tr><th>segment</th><th class=\"l\">description</th><th>customers</th><th>share</th>");
    for f in FEATURE_NAMES {
        let _ = write!(h, "<th>{f}<br>mean / median (lift)</th>");
    }
    h.push_str(
        "<th class=\"l\">most common RFM segments</th><th>outliers</th><th>mean margin</th></tr>\n",
    );
    for p in &run.profiles {
        let c = segment_colour(p.id);
        let _ = write!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:rgb({},{},{})\"></span>{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.1}%</td>",
            c.0, c.1, c.2, p.id, escape(&p.description), p.size, p.share * 100.0
        );
        for f in &p.features {
            let _ = write!(
                h,
                "<td>{:.1} / {:.1} ({:.2}×)</td>",
                f.mean, f.median, f.lift
            );
        }
        let top: Vec<String> = p
            .top_rfm_segments
            .iter()
            .map(|(s, c)| format!("{} ({c})", escape(s.name())))
            .collect();
        let _ = writeln!(
            h,
            "<td class=\"l\">{}</td><td>{}</td><td>{:.3}</td></tr>",
            top.join(", "),
            p.outliers,
            p.mean_margin
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<p class=\"note\">Descriptions are true of the segment's medians: a word for a feature \
         whose median sits in the base's top or bottom third; \"new\" only for a median first purchase \
         within {} days, \"recent\" within {} days, \"lapsed\" after {} days, \"long-standing\" after {} days; \
         no word for a feature with little spread across the base.</p>",
        super::profile::NEW_DAYS,
        super::profile::RECENT_DAYS,
        super::profile::LAPSED_DAYS,
        super::profile::LONG_STANDING_DAYS
    );
    h.push_str("<p class=\"note\">Lift is the segment mean over the whole base's mean. \
        Outliers sit farther from their segment's centre than the chosen percentile of its members. \
        The margin is how much farther the second-nearest segment is (squared, in standardised units).</p>\n");
}

/// With `--clv`: each segment's predicted value and churn risk.
fn value_table(h: &mut String, run: &SegmentRun) {
    if let Some(why) = &run.value_unavailable {
        let _ = writeln!(
            h,
            "<h2>Customer value</h2>\n<p class=\"note\">Not predicted: {}.</p>",
            escape(why)
        );
    }
    let Some(v) = &run.value else { return };
    let s = &v.summary;
    let _ = writeln!(
        h,
        "<h2>Customer value</h2>\n<p>Predicted over the next {} {}s (BG/NBD and Gamma-Gamma fitted on purchases to {}; \
         discount rate {} per {}): total CLV {:.2}; a new customer buys {:.2} times in that time.</p>\n\
         <table><tr><th>segment</th><th class=\"l\">description</th><th>mean CLV</th><th>share of predicted value</th>\
         <th>mean P(alive)</th><th>high churn risk</th></tr>",
        s.horizon,
        s.time_unit.name(),
        s.calibration_end,
        s.discount_rate,
        s.time_unit.name(),
        s.total_clv,
        s.expected_purchases_new_customer
    );
    for p in &run.profiles {
        let Some(pv) = &p.value else { continue };
        let c = segment_colour(p.id);
        let _ = writeln!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:rgb({},{},{})\"></span>{}</td><td class=\"l\">{}</td>\
             <td>{:.2}</td><td>{:.1}%</td><td>{:.3}</td><td>{} ({:.1}%)</td></tr>",
            c.0,
            c.1,
            c.2,
            p.id,
            escape(&p.description),
            pv.mean_clv,
            pv.value_share * 100.0,
            pv.mean_p_alive,
            pv.high_churn_risk,
            100.0 * pv.high_churn_risk as f64 / p.size.max(1) as f64
        );
    }
    let _ = writeln!(
        h,
        "</table>\n<p class=\"note\">Churn risk: high for P(alive) below {}, medium below {}, low above. \
         BG/NBD r = {:.4}, α = {:.4}, a = {:.4}, b = {:.4}; Gamma-Gamma p = {:.4}, q = {:.4}, v = {:.4}.</p>",
        s.churn_thresholds.high,
        s.churn_thresholds.medium,
        s.bgnbd.r,
        s.bgnbd.alpha,
        s.bgnbd.a,
        s.bgnbd.b,
        s.gamma_gamma.p,
        s.gamma_gamma.q,
        s.gamma_gamma.v
    );
    for w in &s.warnings {
        let _ = writeln!(h, "<p class=\"note\">Warning: {}</p>", escape(w));
    }
}

fn sweep_table(h: &mut String, run: &SegmentRun) {
    let Some(sweep) = &run.sweep else { return };
    let _ = writeln!(
        h,
        "<h2>Choosing k</h2>\n<p>Recommended <b>{}</b></p>\n<p class=\"note\">The rule: {}</p>\n<table><tr><th>k</th><th>silhouette</th><th>smallest segment</th><th>stability (ARI)</th><th>eligible</th><th>inertia</th><th>Davies–Bouldin</th><th>Calinski–Harabasz</th></tr>",
        escape(&sweep.reason),
        escape(&sweep.rule)
    );
    for s in &sweep.scores {
        let _ = writeln!(
            h,
            "<tr><td>{}{}</td><td>{:.4}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.4}</td><td>{:.1}</td></tr>",
            s.k,
            if s.k == sweep.recommended_k { " ★" } else { "" },
            s.silhouette,
            s.min_share * 100.0,
            super::sweep::shown_stability(s.stability),
            if s.eligible { "yes" } else { "no" },
            s.inertia,
            s.davies_bouldin,
            s.calinski_harabasz
        );
    }
    h.push_str("</table>\n");
    let f = &run.feature_choice;
    let _ = writeln!(
        h,
        "<p class=\"note\">Clustered on {}.{}</p>",
        escape(&f.clustered.join(", ")),
        if f.left_out.is_empty() {
            String::new()
        } else {
            escape(&format!(
                " Left out for little spread across customers (interquartile range over median below {}): {}.",
                super::profile::MIN_SPREAD,
                f.left_out
                    .iter()
                    .map(|(n, s)| format!("{n} ({s:.2})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    );
}

fn refresh_tables(h: &mut String, run: &SegmentRun) {
    let Some(r) = &run.refresh else { return };
    let t = &r.transitions;
    let (k, k_new) = (t.counts.len(), t.arrived.len());
    let id = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(i as u32);
    let _ = write!(
        h,
        "<h2>Refresh since {}</h2>\n<p>{}</p>\n<p>Rows: previous segment; columns: current segment.</p>\n<table><tr><th></th>",
        r.previous_as_of,
        escape(&super::refresh::kept_sentence(r)),
    );
    for j in 0..k_new {
        let _ = write!(h, "<th>now {}</th>", id(&t.ids, j));
    }
    h.push_str("<th>left</th></tr>\n");
    for i in 0..k {
        let _ = write!(h, "<tr><th>was {}</th>", id(&t.previous_ids, i));
        for j in 0..k_new {
            let _ = write!(h, "<td>{}</td>", t.counts[i][j]);
        }
        let _ = writeln!(h, "<td>{}</td></tr>", t.left[i]);
    }
    h.push_str("<tr><th>new customers</th>");
    for a in &t.arrived {
        let _ = write!(h, "<td>{a}</td>");
    }
    h.push_str("<td></td></tr></table>\n<h3>Size drift</h3>\n<table><tr><th>segment</th><th>previous</th><th>now</th><th>share before</th><th>share now</th></tr>\n");
    for d in &r.size_drift {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td></tr>",
            d.segment,
            d.previous_size,
            d.size,
            d.previous_share * 100.0,
            d.share * 100.0
        );
    }
    h.push_str("</table>\n");
}

fn input_notes(h: &mut String, run: &SegmentRun) {
    let i = &run.input;
    let _ = write!(
        h,
        "<h2>Input</h2>\n<ul><li>{} rows read; {} skipped as unreadable</li>\
         <li>{} lines after the as-of date ignored; {} refund lines subtracted from spend</li>\
         <li>{} customers with refunds but no purchase left out</li><li>frequency counts {}</li></ul>\n",
        i.rows_read,
        i.bad_rows.total,
        i.notes.lines_after_as_of,
        i.notes.refund_lines,
        i.notes.customers_without_purchase,
        i.frequency_basis.counts()
    );
    if let Some(w) = i.notes.future.warning() {
        let _ = writeln!(h, "<p class=\"note\">{}.</p>", escape(&w));
    }
    if i.bad_rows.total > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">Skipped rows by problem: {}</p>",
            escape(&i.bad_rows.summary(false))
        );
    }
    let _ = writeln!(
        h,
        "<p class=\"note\">Read as: {}dates {}.</p>",
        i.delimiter.map_or(String::new(), |d| format!(
            "fields separated by “{}”, ",
            d.shown()
        )),
        escape(&i.date_format)
    );
}

fn rfm_rules(h: &mut String) {
    h.push_str("<h2>RFM segment rules</h2>\n<p class=\"note\">R, F and M are quintile scores 1–5; FM is the mean of F and M rounded up.</p>\n<table><tr><th>R \\ FM</th>");
    for fm in 1..=5 {
        let _ = write!(h, "<th>{fm}</th>");
    }
    h.push_str("</tr>\n");
    for r in (1..=5).rev() {
        let _ = write!(h, "<tr><th>{r}</th>");
        for fm in 1..=5 {
            let _ = write!(
                h,
                "<td class=\"l\">{}</td>",
                escape(RfmSegment::of(r, fm).name())
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}
