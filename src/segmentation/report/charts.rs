//! The report's charts, drawn with plotters into PNG files. Text uses the
//! bundled DejaVu Sans, so nothing depends on the machine's fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::Result;
use crate::segmentation::features::FEATURE_NAMES;
use crate::segmentation::{SegmentRun, SegmentationError};

/// A chart written next to the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub file: &'static str,
    pub title: &'static str,
}

pub(crate) const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Only fails on bytes that are not a font; these are DejaVu's own.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// A segment's colour, the same in every chart.
pub fn segment_colour(id: usize) -> RGBColor {
    const COLOURS: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    COLOURS[id % COLOURS.len()]
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws one chart into `dir/chart.file` (a PNG).
pub(crate) fn draw(
    dir: &Path,
    chart: &Chart,
    paint: impl FnOnce(&Area) -> std::result::Result<(), String>,
) -> Result<()> {
    let path = dir.join(chart.file);
    let fail = |e: String| SegmentationError::output(&path, e);
    let root = BitMapBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    paint(&root).map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Removes the charts in `possible` that this run did not draw: a rerun
/// into the same directory must not leave an earlier run's chart beside a
/// report that no longer shows it.
pub fn remove_stale_charts(dir: &Path, drawn: &[Chart], possible: &[&str]) -> Result<()> {
    for file in possible
        .iter()
        .filter(|f| !drawn.iter().any(|c| c.file == **f))
    {
        let path = dir.join(file);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SegmentationError::output(&path, e.to_string()).into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every chart [`write_charts`] may draw.
pub const SEGMENT_CHARTS: &[&str] = &[
    "elbow.png",
    "silhouette.png",
    "pca_scatter.png",
    "profile_heatmap.png",
    "segment_sizes.png",
    "value_by_segment.png",
    "p_alive.png",
    "transitions.png",
];

/// Draws every chart that applies to `run` into `dir`.
pub fn write_charts(run: &SegmentRun, dir: &Path) -> Result<Vec<Chart>> {
    register_font();
    let mut charts = Vec::new();
    if let Some(sweep) = &run.sweep {
        let ks: Vec<f64> = sweep.scores.iter().map(|s| s.k as f64).collect();
        let elbow = Chart {
            file: "elbow.png",
            title: "Inertia against k (elbow); the chosen k in red",
        };
        let inertia: Vec<f64> = sweep.scores.iter().map(|s| s.inertia).collect();
        draw(dir, &elbow, |a| {
            let (chart, key) = a.split_vertically(SIZE.1 - 30);
            line_chart(
                &chart,
                elbow.title,
                "inertia (within-segment sum of squares)",
                &ks,
                &inertia,
                sweep.recommended_k,
                false,
            )?;
            key.draw(&Text::new(
                format!(
                    "k = {} chosen by silhouette, smallest segment and stability (the report's table), not by the elbow alone",
                    sweep.recommended_k
                ),
                (16, 6),
                TextStyle::from((FONT, 13).into_font()),
            ))
            .map_err(s)
        })?;
        charts.push(elbow);
        let sil = Chart {
            file: "silhouette.png",
            title: "Silhouette against k (higher is better; axis from 0)",
        };
        let silhouette: Vec<f64> = sweep.scores.iter().map(|s| s.silhouette).collect();
        draw(dir, &sil, |a| {
            line_chart(
                a,
                sil.title,
                "mean silhouette",
                &ks,
                &silhouette,
                sweep.recommended_k,
                true,
            )
        })?;
        charts.push(sil);
    }
    let scatter = Chart {
        file: "pca_scatter.png",
        title: "Customers on the first two principal components",
    };
    draw(dir, &scatter, |a| scatter_chart(a, run, scatter.title))?;
    charts.push(scatter);
    let heat = Chart {
        file: "profile_heatmap.png",
        title: "Segment profiles: mean lift against the whole base",
    };
    draw(dir, &heat, |a| profile_heatmap(a, run, heat.title))?;
    charts.push(heat);
    let sizes = Chart {
        file: "segment_sizes.png",
        title: "Customers per segment",
    };
    draw(dir, &sizes, |a| {
        let counts: Vec<f64> = run.profiles.iter().map(|p| p.size as f64).collect();
        let labels: Vec<String> = run
            .profiles
            .iter()
            .map(|p| format!("{} ({:.1}%)", p.size, p.share * 100.0))
            .collect();
        segment_bars(a, run, sizes.title, "customers", &counts, &labels)
    })?;
    charts.push(sizes);
    if let Some(v) = &run.value {
        let value = Chart {
            file: "value_by_segment.png",
            title: "Predicted value (CLV) by segment",
        };
        draw(dir, &value, |a| {
            let totals: Vec<f64> = run
                .profiles
                .iter()
                .map(|p| p.value.as_ref().map_or(0.0, |v| v.total_clv))
                .collect();
            let labels: Vec<String> = run
                .profiles
                .iter()
                .map(|p| {
                    p.value.as_ref().map_or(String::new(), |v| {
                        format!(
                            "{:.0} ({:.1}%), {:.1} per customer",
                            v.total_clv,
                            v.value_share * 100.0,
                            v.mean_clv
                        )
                    })
                })
                .collect();
            segment_bars(
                a,
                run,
                value.title,
                "predicted value over the horizon",
                &totals,
                &labels,
            )
        })?;
        charts.push(value);
        let alive = Chart {
            file: "p_alive.png",
            title: "P(alive): customers by probability of still buying",
        };
        draw(dir, &alive, |a| {
            p_alive_histogram(
                a,
                &v.scores.p_alive,
                &v.summary.churn_thresholds,
                alive.title,
            )
        })?;
        charts.push(alive);
    }
    if run.refresh.is_some() {
        let moves = Chart {
            file: "transitions.png",
            title: "Customers by previous and current segment",
        };
        draw(dir, &moves, |a| transition_heatmap(a, run, moves.title))?;
        charts.push(moves);
    }
    Ok(charts)
}

fn line_chart(
    a: &Area,
    title: &str,
    y_desc: &str,
    xs: &[f64],
    ys: &[f64],
    mark: usize,
    from_zero: bool,
) -> std::result::Result<(), String> {
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let pad = ((hi - lo) * 0.1).max(1e-9);
    // A score axis from 0 (or below, for negative scores): differences
    // between k look as large as they are.
    let (lo, pad_lo) = if from_zero {
        (lo.min(0.0), 0.0)
    } else {
        (lo, pad)
    };
    let x0 = xs.first().copied().unwrap_or(0.0);
    let x1 = xs.last().copied().unwrap_or(1.0).max(x0 + 1.0);
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((x0 - 0.5)..(x1 + 0.5), (lo - pad_lo)..(hi + pad))
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(format!("k (chosen: {mark})"))
        .y_desc(y_desc)
        .x_labels(xs.len().min(20))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(s)?;
    let points: Vec<(f64, f64)> = xs.iter().copied().zip(ys.iter().copied()).collect();
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .map_err(s)?;
    chart
        .draw_series(points.iter().map(|&(x, y)| {
            let chosen = x as usize == mark;
            Circle::new(
                (x, y),
                if chosen { 8 } else { 4 },
                if chosen { RED.filled() } else { BLUE.filled() },
            )
        }))
        .map_err(s)?;
    Ok(())
}

fn scatter_chart(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let pts = &run.scatter.points;
    let range = |i: usize| {
        let (l, h) = pts
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), p| {
                (l.min(p[i]), h.max(p[i]))
            });
        if l.is_finite() {
            (l - 0.2)..(h + 0.2)
        } else {
            -1.0..1.0
        }
    };
    let [r1, r2] = run.scatter.explained_variance_ratio;
    // The legend gets its own panel: it never covers customers.
    let (plot, legend) = a.split_horizontally(SIZE.0 - 260);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(range(0), range(1))
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "PC1 ({:.0}% of variance): mostly {}",
            r1 * 100.0,
            run.scatter.drivers[0]
        ))
        .y_desc(format!(
            "PC2 ({:.0}%): mostly {}",
            r2 * 100.0,
            run.scatter.drivers[1]
        ))
        .label_style((FONT, 13))
        .draw()
        .map_err(s)?;
    for (index, p) in run.profiles.iter().enumerate() {
        let colour = segment_colour(p.id);
        chart
            .draw_series(
                pts.iter()
                    .zip(&run.scatter.labels)
                    .filter(|(_, &l)| l as usize == index)
                    .map(|(q, _)| Circle::new((q[0], q[1]), 2, colour.mix(0.6).filled())),
            )
            .map_err(s)?;
    }
    let text = TextStyle::from((FONT, 13).into_font());
    for (i, p) in run.profiles.iter().enumerate() {
        let y = 60 + 44 * i as i32;
        legend
            .draw(&Circle::new((12, y + 7), 6, segment_colour(p.id).filled()))
            .map_err(s)?;
        for (line, part) in wrap(&segment_name(p), 30).iter().enumerate() {
            legend
                .draw(&Text::new(
                    part.clone(),
                    (26, y + 16 * line as i32),
                    text.clone(),
                ))
                .map_err(s)?;
        }
    }
    Ok(())
}

/// Splits `text` at spaces into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// "3: recent, frequent, high spend".
pub fn segment_name(p: &crate::segmentation::profile::SegmentProfile) -> String {
    format!("{}: {}", p.id, p.description)
}

/// Whether a higher value of each feature is better for the business:
/// recency is days since the last purchase, so lower is better.
const HIGHER_IS_BETTER: [bool; 5] = [false, true, true, true, true];

/// The goodness of a lift in log2 units: positive is better than the base.
fn goodness(feature: usize, lift: f64) -> f64 {
    let l = lift.max(1e-3).log2();
    if HIGHER_IS_BETTER[feature] {
        l
    } else {
        -l
    }
}

/// Green for better than the base, red for worse, white at lift 1; the
/// shade is linear in log2(lift) up to `full` (the largest in the chart),
/// so 0.07× and 0.24× are told apart.
fn goodness_colour(g: f64, full: f64) -> RGBColor {
    let t = (g / full.max(1e-9)).clamp(-1.0, 1.0);
    let fade = |c: u8| (255.0 - (255.0 - c as f64) * t.abs()) as u8;
    if t >= 0.0 {
        RGBColor(fade(26), fade(152), fade(80))
    } else {
        RGBColor(fade(215), fade(48), fade(39))
    }
}

fn grid_chart(
    a: &Area,
    title: &str,
    columns: &[String],
    rows: &[String],
    cell: &dyn Fn(usize, usize) -> (RGBColor, String),
) -> std::result::Result<(), String> {
    let (nc, nr) = (columns.len(), rows.len());
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(270)
        .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
        .map_err(s)?;
    let label = |names: &[String], v: f64| {
        let i = v.floor() as usize;
        if (v - v.floor() - 0.5).abs() < 1e-6 && i < names.len() {
            names[i].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nc * 2 + 1)
        .y_labels(nr * 2 + 1)
        .x_label_formatter(&|v| label(columns, *v))
        .y_label_formatter(&|v| label(rows, nr as f64 - *v))
        .label_style((FONT, 14))
        .draw()
        .map_err(s)?;
    for r in 0..nr {
        for c in 0..nc {
            let (colour, text) = cell(r, c);
            let y = (nr - 1 - r) as f64;
            chart
                .draw_series([Rectangle::new(
                    [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                    colour.filled(),
                )])
                .map_err(s)?;
            let style = TextStyle::from((FONT, 15).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            chart
                .draw_series([Text::new(text, (c as f64 + 0.5, y + 0.5), style)])
                .map_err(s)?;
        }
    }
    Ok(())
}

/// Names short enough for an axis: the id and the description, clipped.
fn segment_names(run: &SegmentRun) -> Vec<String> {
    run.profiles
        .iter()
        .map(|p| {
            let name = segment_name(p);
            if name.chars().count() > 38 {
                name.chars().take(37).chain(['…']).collect()
            } else {
                name
            }
        })
        .collect()
}

fn profile_heatmap(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let columns: Vec<String> = FEATURE_NAMES
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let name = if HIGHER_IS_BETTER[j] {
                s.to_string()
            } else {
                format!("{s} (low = good)")
            };
            if run.model.features.iter().any(|f| f == s) {
                name
            } else {
                format!("{name} (not clustered)")
            }
        })
        .collect();
    let full = run
        .profiles
        .iter()
        .flat_map(|p| {
            p.features
                .iter()
                .enumerate()
                .map(|(j, f)| goodness(j, f.lift).abs())
        })
        .fold(0.0, f64::max);
    let (grid, key) = a.split_vertically(SIZE.1 - 30);
    grid_chart(&grid, title, &columns, &segment_names(run), &|r, c| {
        let lift = run.profiles[r].features[c].lift;
        (
            goodness_colour(goodness(c, lift), full),
            format!("{lift:.2}×"),
        )
    })?;
    key.draw(&Text::new(
        format!(
            "cells: segment mean ÷ base mean. Green: better than the base, red: worse; shade by log2 of the lift, full at {:.1}× (or 1/{:.1}×)",
            full.exp2(),
            full.exp2()
        ),
        (16, 6),
        TextStyle::from((FONT, 13).into_font()),
    ))
    .map_err(s)?;
    Ok(())
}

fn transition_heatmap(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let Some(refresh) = &run.refresh else {
        return Ok(());
    };
    let t = &refresh.transitions;
    let k = t.counts.len();
    let k_new = t.arrived.len();
    let id = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(i as u32);
    let mut columns: Vec<String> = (0..k_new)
        .map(|i| format!("now {}", id(&t.ids, i)))
        .collect();
    columns.push("left".into());
    let mut rows: Vec<String> = (0..k)
        .map(|i| {
            let name = match refresh.previous_descriptions.get(i) {
                Some(d) => format!("was {}: {d}", id(&t.previous_ids, i)),
                None => format!("was {}", id(&t.previous_ids, i)),
            };
            if name.chars().count() > 38 {
                name.chars().take(37).chain(['…']).collect()
            } else {
                name
            }
        })
        .collect();
    rows.push("new customers".into());
    let max = t
        .counts
        .iter()
        .flatten()
        .chain(&t.arrived)
        .chain(&t.left)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let (grid, key) = a.split_vertically(SIZE.1 - 30);
    grid_chart(&grid, title, &columns, &rows, &|r, c| {
        let count = match (r < k, c < k_new) {
            (true, true) => t.counts[r][c],
            (true, false) => t.left[r],
            (false, true) => t.arrived[c],
            (false, false) => 0,
        };
        let shade = 255 - (200.0 * count as f64 / max as f64) as u8;
        (RGBColor(shade, shade, 255), count.to_string())
    })?;
    // The current segments' names, under the chart.
    let names: Vec<String> = run.profiles.iter().map(segment_name).collect();
    let mut line = format!("now: {}", names.join(" · "));
    if line.chars().count() > 140 {
        line = line.chars().take(139).chain(['…']).collect();
    }
    key.draw(&Text::new(
        line,
        (16, 6),
        TextStyle::from((FONT, 12).into_font()),
    ))
    .map_err(s)
}

/// Horizontal bars: the segment names fit on the axis in full.
/// One horizontal bar per segment, `values[i]` long and labelled
/// `labels[i]`, in profile order.
fn segment_bars(
    a: &Area,
    run: &SegmentRun,
    title: &str,
    x_desc: &str,
    values: &[f64],
    labels: &[String],
) -> std::result::Result<(), String> {
    let k = run.profiles.len();
    let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    // Room on the right for the longest label: about 7 px a character on
    // a plot some 570 px wide, the bars taking what is left (at least a
    // third).
    let widest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as f64;
    let room = 1.02 / (1.0 - (widest * 7.0 / 570.0).min(0.66));
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(290)
        .build_cartesian_2d(0.0..max * room, 0.0..k as f64)
        .map_err(s)?;
    let names = segment_names(run);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(k * 2 + 1)
        .y_label_formatter(&|v| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 1e-6 && i < k {
                names[k - 1 - i].clone()
            } else {
                String::new()
            }
        })
        .x_desc(x_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 13))
        .draw()
        .map_err(s)?;
    for (i, p) in run.profiles.iter().enumerate() {
        let y = (k - 1 - i) as f64;
        chart
            .draw_series([Rectangle::new(
                [(0.0, y + 0.15), (values[i], y + 0.85)],
                segment_colour(p.id).filled(),
            )])
            .map_err(s)?;
        let style =
            TextStyle::from((FONT, 14).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            ));
        chart
            .draw_series([Text::new(
                labels[i].clone(),
                (values[i] + max * 0.01, y + 0.5),
                style,
            )])
            .map_err(s)?;
    }
    Ok(())
}

/// A histogram of P(alive) in 20 bins, coloured by churn risk, with the
/// thresholds marked.
pub(crate) fn p_alive_histogram(
    a: &Area,
    p_alive: &[f64],
    thresholds: &crate::value::ChurnThresholds,
    title: &str,
) -> std::result::Result<(), String> {
    const BINS: usize = 20;
    let mut counts = [0usize; BINS];
    for &p in p_alive {
        counts[((p * BINS as f64) as usize).min(BINS - 1)] += 1;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..1.0, 0.0..max * 1.1)
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "P(alive) (high churn risk below {}, medium below {})",
            thresholds.high, thresholds.medium
        ))
        .y_desc("customers")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 13))
        .draw()
        .map_err(s)?;
    for (b, &c) in counts.iter().enumerate() {
        let (x0, x1) = (b as f64 / BINS as f64, (b + 1) as f64 / BINS as f64);
        let colour = match thresholds.risk((x0 + x1) / 2.0) {
            crate::value::ChurnRisk::High => RGBColor(214, 39, 40),
            crate::value::ChurnRisk::Medium => RGBColor(255, 160, 40),
            crate::value::ChurnRisk::Low => RGBColor(44, 160, 44),
        };
        chart
            .draw_series([Rectangle::new([(x0, 0.0), (x1, c as f64)], colour.filled())])
            .map_err(s)?;
    }
    for t in [thresholds.high, thresholds.medium] {
        chart
            .draw_series(LineSeries::new(
                [(t, 0.0), (t, max * 1.1)],
                BLACK.stroke_width(2),
            ))
            .map_err(s)?;
    }
    Ok(())
}
