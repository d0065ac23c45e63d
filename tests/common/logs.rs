//! Transaction logs shaped like real shops, not like the demo's planted
//! groups: nobody tuned the segmentation to them.

use std::io::Write;
use std::path::Path;

use chrono::{Days, NaiveDate};
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn exponential(rng: &mut Xoshiro256PlusPlus, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn lognormal(rng: &mut Xoshiro256PlusPlus, median: f64, sigma: f64) -> f64 {
    // Box–Muller.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    median * (sigma * z).exp()
}

struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    order: usize,
}

impl Writer {
    fn new(path: &Path) -> Self {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(out, "customer_id,order_id,date,amount").unwrap();
        Self { out, order: 0 }
    }

    /// One order of `lines` lines summing to about `spend`.
    fn order(&mut self, rng: &mut Xoshiro256PlusPlus, customer: usize, day: NaiveDate, spend: f64) {
        self.order += 1;
        let lines = 1 + rng.random_range(0..4);
        for _ in 0..lines {
            writeln!(
                self.out,
                "U{customer:06},{},{day},{:.2}",
                self.order,
                spend / lines as f64
            )
            .unwrap();
        }
    }
}

/// One cohort, as in the UCI Online Retail data: every customer's first
/// purchase within three months, the log a year long; a third buy once,
/// the rest return at their own pace until they drift away; spend per
/// order is lognormal around a customer's own level.
pub fn single_cohort(path: &Path, customers: usize, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let start = NaiveDate::from_ymd_opt(2010, 12, 1).unwrap();
    let end = NaiveDate::from_ymd_opt(2011, 12, 9).unwrap();
    let mut w = Writer::new(path);
    for c in 0..customers {
        let first = start + Days::new(rng.random_range(0..90));
        let level = lognormal(&mut rng, 300.0, 0.9);
        let one_time = rng.random::<f64>() < 0.35;
        let gap = lognormal(&mut rng, 45.0, 0.8);
        let lifetime = exponential(&mut rng, 250.0);
        let mut day = first;
        let mut age = 0.0;
        loop {
            let spend = lognormal(&mut rng, level, 0.5);
            w.order(&mut rng, c, day, spend);
            if one_time {
                break;
            }
            let step = exponential(&mut rng, gap).ceil().max(1.0);
            age += step;
            day = day + Days::new(step as u64);
            if age > lifetime || day > end {
                break;
            }
        }
    }
    w.out.flush().unwrap();
}

/// A shop open eight years: customers arrive all the time (more before
/// Christmas), buy more in November and December, churn at a steady rate;
/// spend is heavy-tailed (a few customers spend a hundred times the median).
pub fn long_running_shop(path: &Path, customers: usize, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let start = NaiveDate::from_ymd_opt(2018, 1, 1).unwrap();
    let days = 8 * 365;
    let end = start + Days::new(days);
    let festive = |d: NaiveDate| matches!(chrono::Datelike::month(&d), 11 | 12);
    let mut w = Writer::new(path);
    for c in 0..customers {
        // Arrivals: uniform, with a second chance to land in Nov–Dec.
        let mut first = start + Days::new(rng.random_range(0..days));
        if !festive(first) && rng.random::<f64>() < 0.3 {
            let year = chrono::Datelike::year(&first);
            first =
                NaiveDate::from_ymd_opt(year, 11, 1).unwrap() + Days::new(rng.random_range(0..60));
        }
        // Pareto-tailed spend level (alpha 1.3).
        let level = 40.0 / (1.0 - rng.random::<f64>()).powf(1.0 / 1.3);
        let gap = lognormal(&mut rng, 60.0, 1.0);
        let lifetime = exponential(&mut rng, 700.0);
        let mut day = first;
        let mut age = 0.0;
        while day < end {
            let boost = if festive(day) { 1.6 } else { 1.0 };
            let spend = lognormal(&mut rng, level * boost, 0.6);
            w.order(&mut rng, c, day, spend);
            let step = (exponential(&mut rng, gap) / boost).ceil().max(1.0);
            age += step;
            if age > lifetime {
                break;
            }
            day = day + Days::new(step as u64);
        }
    }
    w.out.flush().unwrap();
}

/// A daily log over two years from 2024-01-01, as the value models assume:
/// each customer starts on a random day of the first year, buys at a personal rate (a Poisson process in days) and
/// leaves after a purchase with a personal probability; amounts around a
/// personal mean. Some days carry two lines (one purchase).
pub fn buying_and_leaving(path: &Path, customers: usize, seed: u64) {
    use std::fmt::Write as _;
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut text = String::from("customer_id,date,amount\n");
    let end = 730i64;
    for c in 0..customers {
        let first = rng.random_range(0..365i64);
        let rate = 0.005 + 0.05 * rng.random::<f64>();
        let leave = 0.02 + 0.3 * rng.random::<f64>();
        let mean = 20.0 + 80.0 * rng.random::<f64>();
        let mut day = first as f64;
        loop {
            let d = day as i64;
            if d > end {
                break;
            }
            let amount = mean * (0.5 + rng.random::<f64>());
            let date = start + chrono::Duration::days(d);
            writeln!(text, "C{c:05},{date},{amount:.2}").unwrap();
            if rng.random::<f64>() < 0.1 {
                writeln!(text, "C{c:05},{date},{:.2}", amount / 2.0).unwrap();
            }
            if d > first && rng.random::<f64>() < leave {
                break;
            }
            day += -(1.0 - rng.random::<f64>()).ln() / rate;
        }
    }
    std::fs::write(path, text).unwrap();
}
