//! `bench --clv`: BG/NBD and Gamma-Gamma fits and scoring of simulated
//! customers, end to end from the per-customer summary, and with
//! `--compare` the `lifetimes` package on the same summary
//! (`scripts/bench_clv_peer.py`).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use serde_json::json;

use super::super::output::table;
use segmenta::value::bgnbd::{BgNbd, BgNbdParams};
use segmenta::value::clv::{score, ClvOptions};
use segmenta::value::gamma_gamma::{GammaGamma, GammaGammaParams};
use segmenta::value::simulate::{customers, Observation, Simulated};
use segmenta::value::Rft;

/// The simulated population: CDNOW-like BG/NBD parameters in weeks, first
/// purchases spread over two years, dates on a daily grid as in a log.
fn population(n: usize, seed: u64) -> Vec<Simulated> {
    let bg = BgNbdParams {
        r: 0.25,
        alpha: 4.0,
        a: 0.8,
        b: 2.5,
    };
    let gg = GammaGammaParams {
        p: 6.0,
        q: 4.0,
        v: 15.0,
    };
    let obs = Observation {
        t_min: 1.0,
        t_max: 104.0,
        holdout: 0.0,
        grid: Some(1.0 / 7.0),
    };
    customers(n, &bg, &gg, &obs, seed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

const HORIZON: u32 = 52;

pub fn run(n: usize, repeats: usize, compare: bool, seed: u64, json: bool) -> anyhow::Result<()> {
    if !json {
        eprintln!("simulating {n} customers...");
    }
    let sim = population(n, seed);
    let rft: Vec<Rft> = sim.iter().map(|s| s.rft).collect();
    let x: Vec<u32> = rft.iter().map(|r| r.x).collect();
    let m: Vec<f64> = sim.iter().map(|s| s.mean_repeat_spend).collect();
    let options = ClvOptions {
        horizon: HORIZON,
        discount_rate: 0.0,
        churn: Default::default(),
    };
    let (mut fit_bg, mut fit_gg, mut scoring, mut total) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let all = Instant::now();
        let t = Instant::now();
        let bg = BgNbd::fit(&rft, true)?;
        fit_bg.push(ms(t));
        let t = Instant::now();
        let gg = GammaGamma::fit(&x, &m)?;
        fit_gg.push(ms(t));
        let t = Instant::now();
        let (bgm, ggm) = (
            BgNbd { params: bg.params },
            GammaGamma {
                params: gg.fitted.params,
            },
        );
        let scores = score(&bgm, &ggm, &rft, &m, &options)?;
        scoring.push(ms(t));
        total.push(ms(all));
        last = Some((bg, gg, scores.clv.iter().sum::<f64>()));
    }
    let t = Instant::now();
    BgNbd::fit(&rft, false)?;
    let ungrouped = ms(t);
    let (bg, gg, total_clv) = last.expect("one repeat");
    let peer = if compare {
        Some(lifetimes(&sim, repeats)?)
    } else {
        None
    };
    let ours = json!({
        "fit_bgnbd_ms": median(fit_bg),
        "fit_bgnbd_ungrouped_ms": ungrouped,
        "fit_gamma_gamma_ms": median(fit_gg),
        "score_ms": median(scoring),
        "total_ms": median(total),
        "params": {"bgnbd": bg.params, "gamma_gamma": gg.fitted.params},
        "iterations": {"bgnbd": bg.report.iterations, "gamma_gamma": gg.fitted.report.iterations},
        "total_clv": total_clv,
    });
    if json {
        say!(
            "{}",
            json!({"customers": n, "horizon_weeks": HORIZON, "repeats": repeats, "segmenta": ours, "lifetimes": peer})
        );
        return Ok(());
    }
    let f =
        |v: &serde_json::Value, k: &str| v[k].as_f64().map_or("–".into(), |x| format!("{x:.0}"));
    let header = ["step", "segmenta ms", "lifetimes ms"].map(String::from);
    let none = serde_json::Value::Null;
    let p = peer.as_ref().unwrap_or(&none);
    let rows: Vec<Vec<String>> = [
        ("BG/NBD fit", "fit_bgnbd_ms"),
        ("Gamma-Gamma fit", "fit_gamma_gamma_ms"),
        ("scoring (P(alive), E[Y(52)], spend, CLV)", "score_ms"),
        ("total", "total_ms"),
    ]
    .iter()
    .map(|(name, k)| vec![name.to_string(), f(&ours, k), f(p, k)])
    .collect();
    say!("{n} customers, median of {repeats}; BG/NBD fit without grouping: {ungrouped:.0} ms");
    say!("{}", table(&header, &rows).trim_end_matches('\n'));
    say!(
        "segmenta BG/NBD: {}; Gamma-Gamma: {}",
        bg.params,
        gg.fitted.params
    );
    if let Some(p) = &peer {
        say!("lifetimes {}: {}", p["version"], p["params"]);
    }
    Ok(())
}

/// Writes the summary and times `lifetimes` on it.
fn lifetimes(sim: &[Simulated], repeats: usize) -> anyhow::Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("summary.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    writeln!(w, "x,t_x,T,m")?;
    for s in sim {
        let m = if s.mean_repeat_spend.is_finite() {
            s.mean_repeat_spend.to_string()
        } else {
            String::new()
        };
        writeln!(w, "{},{},{},{m}", s.rft.x, s.rft.t_x, s.rft.t)?;
    }
    w.flush()?;
    drop(w);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_clv_peer.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .arg(HORIZON.to_string())
        .arg(repeats.max(1).to_string())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/bench_clv_peer.py failed (pip install lifetimes?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
