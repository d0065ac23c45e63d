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

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 560);

fn register_font() {
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

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw(
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

/// Draws every chart that applies to `run` into `dir`.
pub fn write_charts(run: &SegmentRun, dir: &Path) -> Result<Vec<Chart>> {
    register_font();
    let mut charts = Vec::new();
    if let Some(sweep) = &run.sweep {
        let ks: Vec<f64> = sweep.scores.iter().map(|s| s.k as f64).collect();
        let elbow = Chart {
            file: "elbow.png",
            title: "Inertia against k (elbow)",
        };
        let inertia: Vec<f64> = sweep.scores.iter().map(|s| s.inertia).collect();
        draw(dir, &elbow, |a| {
            line_chart(
                a,
                elbow.title,
                "inertia",
                &ks,
                &inertia,
                sweep.recommended_k,
            )
        })?;
        charts.push(elbow);
        let sil = Chart {
            file: "silhouette.png",
            title: "Silhouette against k (higher is better)",
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
    draw(dir, &sizes, |a| size_bars(a, run, sizes.title))?;
    charts.push(sizes);
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
) -> std::result::Result<(), String> {
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let pad = ((hi - lo) * 0.1).max(1e-9);
    let x0 = xs.first().copied().unwrap_or(0.0);
    let x1 = xs.last().copied().unwrap_or(1.0).max(x0 + 1.0);
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d((x0 - 0.5)..(x1 + 0.5), (lo - pad)..(hi + pad))
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc("k")
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
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(range(0), range(1))
        .map_err(s)?;
    chart
        .configure_mesh()
        .x_desc(format!("PC1 ({:.0}% of variance)", r1 * 100.0))
        .y_desc(format!("PC2 ({:.0}% of variance)", r2 * 100.0))
        .label_style((FONT, 14))
        .draw()
        .map_err(s)?;
    for (id, p) in run.profiles.iter().enumerate() {
        let colour = segment_colour(id);
        chart
            .draw_series(
                pts.iter()
                    .zip(&run.scatter.labels)
                    .filter(|(_, &l)| l as usize == id)
                    .map(|(q, _)| Circle::new((q[0], q[1]), 2, colour.mix(0.6).filled())),
            )
            .map_err(s)?
            .label(format!("{id}: {}", p.description))
            .legend(move |(x, y)| Circle::new((x, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(s)?;
    Ok(())
}

/// Blue below the base, red above, white at lift 1; saturates at 4× either way.
fn lift_colour(lift: f64) -> RGBColor {
    let t = (lift.max(1e-6).log2() / 2.0).clamp(-1.0, 1.0);
    let fade = |c: u8| (255.0 - (255.0 - c as f64) * t.abs()) as u8;
    if t >= 0.0 {
        RGBColor(fade(214), fade(39), fade(40))
    } else {
        RGBColor(fade(31), fade(119), fade(180))
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
        .y_label_area_size(200)
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

fn segment_names(run: &SegmentRun) -> Vec<String> {
    run.profiles
        .iter()
        .map(|p| format!("segment {}", p.id))
        .collect()
}

fn profile_heatmap(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let columns: Vec<String> = FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
    grid_chart(a, title, &columns, &segment_names(run), &|r, c| {
        let lift = run.profiles[r].features[c].lift;
        (lift_colour(lift), format!("{lift:.2}×"))
    })
}

fn transition_heatmap(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let Some(refresh) = &run.refresh else {
        return Ok(());
    };
    let t = &refresh.transitions;
    let k = t.counts.len();
    let mut columns: Vec<String> = (0..k).map(|i| format!("now {i}")).collect();
    columns.push("left".into());
    let mut rows: Vec<String> = (0..k).map(|i| format!("was {i}")).collect();
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
    grid_chart(a, title, &columns, &rows, &|r, c| {
        let count = match (r < k, c < k) {
            (true, true) => t.counts[r][c],
            (true, false) => t.left[r],
            (false, true) => t.arrived[c],
            (false, false) => 0,
        };
        let shade = 255 - (200.0 * count as f64 / max as f64) as u8;
        (RGBColor(shade, shade, 255), count.to_string())
    })
}

fn size_bars(a: &Area, run: &SegmentRun, title: &str) -> std::result::Result<(), String> {
    let k = run.profiles.len();
    let max = run
        .profiles
        .iter()
        .map(|p| p.size)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(a)
        .caption(title, (FONT, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..k as f64, 0.0..max * 1.15)
        .map_err(s)?;
    let names = segment_names(run);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(k * 2 + 1)
        .x_label_formatter(&|v| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 1e-6 && i < k {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("customers")
        .label_style((FONT, 14))
        .draw()
        .map_err(s)?;
    for p in &run.profiles {
        let x = p.id as f64;
        chart
            .draw_series([Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, p.size as f64)],
                segment_colour(p.id).filled(),
            )])
            .map_err(s)?;
        let style =
            TextStyle::from((FONT, 14).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
        chart
            .draw_series([Text::new(
                format!("{:.1}%", p.share * 100.0),
                (x + 0.5, p.size as f64 + max * 0.02),
                style,
            )])
            .map_err(s)?;
    }
    Ok(())
}
