//! A realistic retail transaction log with planted behavioural groups, from
//! a fixed seed: the data behind `segmenta demo` and its recovery test.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::NaiveDate;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use super::error::SegmentationError;
use super::transactions::{date_of, day_number};
use crate::error::Result;

/// The behaviours planted in the demo log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlantedGroup {
    /// Buy every few weeks, big baskets, for years.
    LoyalBigSpenders,
    /// Buy often, small baskets.
    BargainHunters,
    /// A few orders long ago, then nothing.
    Lapsed,
    /// First order in the last two months.
    New,
    /// Large holiday orders each November–December, little else.
    Seasonal,
}

impl PlantedGroup {
    pub const ALL: [PlantedGroup; 5] = [
        Self::LoyalBigSpenders,
        Self::BargainHunters,
        Self::Lapsed,
        Self::New,
        Self::Seasonal,
    ];
    /// Share of customers in each group, in [`ALL`](Self::ALL) order.
    pub const SHARES: [f64; 5] = [0.15, 0.30, 0.25, 0.15, 0.15];

    pub fn name(&self) -> &'static str {
        match self {
            Self::LoyalBigSpenders => "loyal big spenders",
            Self::BargainHunters => "bargain hunters",
            Self::Lapsed => "lapsed",
            Self::New => "new",
            Self::Seasonal => "seasonal",
        }
    }
}

/// What [`write_demo_log`] wrote.
#[derive(Debug, Clone)]
pub struct DemoLog {
    pub customer_ids: Vec<String>,
    /// The planted group of each customer, aligned with `customer_ids`.
    pub groups: Vec<PlantedGroup>,
    /// Data rows written, including refunds and the deliberately bad rows.
    pub rows: usize,
    pub bad_rows: usize,
    /// The day after the last transaction (the default as-of date).
    pub last_day: NaiveDate,
}

/// The log's last day: the demo's data is as of mid-January 2026, just after
/// the holiday season.
pub fn last_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 15).expect("valid date")
}

/// One in this many rows is written broken (missing id or garbled date), as
/// real exports are; the job skips and reports them.
const BAD_ROW_EVERY: usize = 25_000;

struct Order {
    customer: u32,
    day: i32,
    amount: f64,
}

/// Writes a CSV transaction log (`customer_id,order_id,date,amount`) for
/// `n_customers` customers, sorted by date, with ~2% of orders partly
/// refunded and a few unreadable rows.
pub fn write_demo_log(path: &Path, n_customers: usize, seed: u64) -> Result<DemoLog> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let end = day_number(last_day());
    let mut groups = Vec::with_capacity(n_customers);
    let mut orders = Vec::new();
    for c in 0..n_customers {
        let group = pick_group(rng.random::<f64>());
        groups.push(group);
        plant(&mut rng, group, c as u32, end, &mut orders);
    }
    orders.sort_by_key(|o| o.day);
    let customer_ids: Vec<String> = (0..n_customers).map(|c| format!("C{:07}", c + 1)).collect();
    let io = |e: std::io::Error| SegmentationError::output(path, e);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    writeln!(out, "customer_id,order_id,date,amount").map_err(io)?;
    let (mut rows, mut bad_rows) = (0, 0);
    for (i, o) in orders.iter().enumerate() {
        let id = &customer_ids[o.customer as usize];
        let date = date_of(o.day);
        rows += 1;
        if rows % BAD_ROW_EVERY == 0 {
            bad_rows += 1;
            if bad_rows % 2 == 0 {
                writeln!(out, ",O{:08},{date},{:.2}", i + 1, o.amount).map_err(io)?;
            } else {
                writeln!(out, "{id},O{:08},{date}??,{:.2}", i + 1, o.amount).map_err(io)?;
            }
            continue;
        }
        writeln!(out, "{id},O{:08},{date},{:.2}", i + 1, o.amount).map_err(io)?;
        if rng.random::<f64>() < 0.02 {
            let back = (o.day + rng.random_range(1..15)).min(end);
            let refund = o.amount * rng.random_range(0.2..1.0);
            rows += 1;
            writeln!(out, "{id},O{:08},{},{:.2}", i + 1, date_of(back), -refund).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(DemoLog {
        customer_ids,
        groups,
        rows,
        bad_rows,
        last_day: last_day(),
    })
}

fn pick_group(u: f64) -> PlantedGroup {
    let mut acc = 0.0;
    for (g, share) in PlantedGroup::ALL.iter().zip(PlantedGroup::SHARES) {
        acc += share;
        if u < acc {
            return *g;
        }
    }
    PlantedGroup::Seasonal
}

/// Log-normal basket value around `median`.
fn basket(rng: &mut Xoshiro256PlusPlus, median: f64) -> f64 {
    // Box–Muller: one standard normal from two uniforms.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (median * (0.3 * z).exp()).max(1.0)
}

fn plant(
    rng: &mut Xoshiro256PlusPlus,
    group: PlantedGroup,
    customer: u32,
    end: i32,
    out: &mut Vec<Order>,
) {
    let mut buy = |rng: &mut Xoshiro256PlusPlus, day: i32, median: f64| {
        out.push(Order {
            customer,
            day,
            amount: basket(rng, median),
        })
    };
    match group {
        PlantedGroup::LoyalBigSpenders | PlantedGroup::BargainHunters => {
            let loyal = group == PlantedGroup::LoyalBigSpenders;
            let (gap, median) = if loyal {
                (10..25, 180.0)
            } else {
                (25..50, 18.0)
            };
            let first = end - rng.random_range(300..1000);
            let mut day = first;
            let stop = end - rng.random_range(0..if loyal { 15 } else { 40 });
            while day <= stop {
                buy(rng, day, median);
                day += rng.random_range(gap.clone());
            }
        }
        PlantedGroup::Lapsed => {
            let first = end - rng.random_range(700..1050);
            let n = rng.random_range(2..6);
            let span = rng.random_range(60..300);
            for i in 0..n {
                buy(rng, first + span * i / (n - 1), 60.0);
            }
        }
        PlantedGroup::New => {
            let first = end - rng.random_range(0..60);
            buy(rng, first, 70.0);
            if rng.random::<f64>() < 0.4 {
                let day = (first + rng.random_range(3..30)).min(end);
                buy(rng, day, 70.0);
            }
        }
        PlantedGroup::Seasonal => {
            let year_end = |y: i32| day_number(NaiveDate::from_ymd_opt(y, 12, 24).expect("valid"));
            let seasons = rng.random_range(2..4);
            for y in (2026 - seasons)..2026 {
                for _ in 0..rng.random_range(1..3) {
                    let day = year_end(y) - rng.random_range(0..45);
                    buy(rng, day, 250.0);
                }
            }
        }
    }
}
