//! From a transaction log to what the value models read: per customer the
//! number of repeat purchase days `x`, the time of the last one `t_x` and
//! the time observed `T`, all from the first purchase, and the mean spend
//! per repeat purchase day.
//!
//! A purchase is a day with at least one line of zero or more, as in the
//! BG/NBD paper: several lines (or orders) on one day are one purchase.
//! Refunds (negative lines) are not purchases, as for `segment`; they net
//! into the spend of the purchase day they follow. The first purchase day
//! starts the clock and is not a repeat; its spend is left out of the mean
//! repeat spend, as the Gamma-Gamma papers do.

use serde::{Deserialize, Serialize};

use super::ValueError;
use crate::segmentation::transactions::{date_of, TransactionLog};

/// The unit `t_x`, `T` and horizons are measured in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Day,
    #[default]
    Week,
    /// 365.25 / 12 days.
    Month,
}

impl TimeUnit {
    pub fn days(self) -> f64 {
        match self {
            Self::Day => 1.0,
            Self::Week => 7.0,
            Self::Month => 365.25 / 12.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// One customer's history in the models' terms: `x` repeat purchases, the
/// last at `t_x`, observed for `t` (`T` in the papers), in time units from
/// the first purchase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rft {
    pub x: u32,
    pub t_x: f64,
    pub t: f64,
}

impl Rft {
    /// Checks `0 ≤ t_x ≤ t`, finite, and `t_x = 0` when `x = 0`.
    pub fn check(&self, index: usize) -> Result<(), ValueError> {
        let bad = |what: String| Err(ValueError::BadCustomer { index, what });
        if !(self.t_x.is_finite() && self.t.is_finite()) {
            return bad(format!(
                "t_x = {} and T = {} must be finite",
                self.t_x, self.t
            ));
        }
        if self.t_x < 0.0 || self.t_x > self.t {
            return bad(format!(
                "t_x = {} must lie between 0 and T = {}",
                self.t_x, self.t
            ));
        }
        if self.x == 0 && self.t_x != 0.0 {
            return bad(format!(
                "t_x = {} with no repeat purchase (t_x must be 0)",
                self.t_x
            ));
        }
        Ok(())
    }
}

/// Every customer who bought on or before the calibration end.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Index into the log's `customer_ids`, per customer.
    pub customer: Vec<u32>,
    pub rft: Vec<Rft>,
    /// Mean spend per repeat purchase day (`NaN` without a repeat).
    pub mean_repeat_spend: Vec<f64>,
    /// Purchase days after the calibration end, up to the holdout end.
    pub holdout_purchases: Option<Vec<u32>>,
    /// The holdout's length in time units.
    pub holdout_length: Option<f64>,
    pub unit: TimeUnit,
}

impl Summary {
    pub fn len(&self) -> usize {
        self.rft.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rft.is_empty()
    }

    /// Customers with at least one repeat purchase.
    pub fn repeat_customers(&self) -> usize {
        self.rft.iter().filter(|r| r.x > 0).count()
    }
}

/// Builds the summary of `log` as of `calibration_end` (a day number,
/// inclusive), with holdout purchases up to `holdout_end` (inclusive).
///
/// Refused, with the dates: a calibration end before the first purchase
/// or after the last (the days in between would count as days without
/// purchases), a holdout end not after the calibration end or after the
/// last purchase, and a holdout without any purchase.
pub fn summarise(
    log: &TransactionLog,
    calibration_end: i32,
    holdout_end: Option<i32>,
    unit: TimeUnit,
) -> Result<Summary, ValueError> {
    let (Some(first), Some(last)) = (
        log.lines.iter().map(|l| l.day).min(),
        log.lines.iter().map(|l| l.day).max(),
    ) else {
        return Err(ValueError::NoCustomers);
    };
    let date = |d: i32| date_of(d).to_string();
    if calibration_end < first {
        return Err(ValueError::invalid(
            "calibration_end",
            format!(
                "the calibration end {} is before the first purchase in the log ({})",
                date(calibration_end),
                date(first)
            ),
        ));
    }
    if calibration_end > last {
        return Err(ValueError::invalid(
            "calibration_end",
            format!(
            "the calibration end {} is after the last purchase in the log ({}): the days in between would count as days without purchases",
            date(calibration_end),
            date(last)
        )));
    }
    if let Some(h) = holdout_end {
        if h <= calibration_end {
            return Err(ValueError::invalid(
                "holdout_end",
                format!(
                    "the holdout end {} must come after the calibration end {}",
                    date(h),
                    date(calibration_end)
                ),
            ));
        }
        if h > last {
            return Err(ValueError::invalid(
            "holdout_end",
            format!(
                "the holdout end {} is after the last purchase in the log ({}): the days in between would count as days without purchases",
                date(h),
                date(last)
            )));
        }
    }
    // Per customer: the sorted purchase days and each day's spend.
    let n_ids = log.customer_ids.len();
    let mut days: Vec<Vec<(i32, f64)>> = vec![Vec::new(); n_ids];
    for l in &log.lines {
        days[l.customer as usize].push((l.day, l.spend));
    }
    let unit_days = unit.days();
    let mut out = Summary {
        customer: Vec::new(),
        rft: Vec::new(),
        mean_repeat_spend: Vec::new(),
        holdout_purchases: holdout_end.map(|_| Vec::new()),
        holdout_length: holdout_end.map(|h| (h - calibration_end) as f64 / unit_days),
        unit,
    };
    let mut holdout_total = 0u64;
    for (c, lines) in days.iter_mut().enumerate() {
        lines.sort_by_key(|&(d, _)| d);
        // One entry per purchase day with the day's spend. A day is a
        // purchase when it has a line of zero or more (as for `segment`); a
        // refund (a negative line) nets into the spend of the latest
        // purchase day on or before it, and a refund before any purchase
        // is dropped. Refunds after the calibration end are left out as
        // its purchases are: the fit sees only what was known then.
        let mut purchase_days: Vec<(i32, f64)> = Vec::new();
        for &(d, s) in lines.iter().filter(|(_, s)| *s >= 0.0) {
            match purchase_days.last_mut() {
                Some((last_day, spend)) if *last_day == d => *spend += s,
                _ => purchase_days.push((d, s)),
            }
        }
        for &(d, s) in lines
            .iter()
            .filter(|&&(d, s)| s < 0.0 && d <= calibration_end)
        {
            let at = purchase_days.partition_point(|&(p, _)| p <= d);
            if at > 0 {
                purchase_days[at - 1].1 += s;
            }
        }
        let Some(&(start, _)) = purchase_days.first() else {
            continue;
        };
        if start > calibration_end {
            continue; // not yet a customer at the calibration end
        }
        let calibration: Vec<&(i32, f64)> = purchase_days
            .iter()
            .filter(|(d, _)| *d <= calibration_end)
            .collect();
        let x = calibration.len() as u32 - 1;
        let last_day = calibration.last().expect("the first day").0;
        out.customer.push(c as u32);
        out.rft.push(Rft {
            x,
            t_x: (last_day - start) as f64 / unit_days,
            t: (calibration_end - start) as f64 / unit_days,
        });
        let mean = if x == 0 {
            f64::NAN
        } else {
            calibration[1..].iter().map(|(_, s)| s).sum::<f64>() / x as f64
        };
        if x > 0 && !mean.is_finite() {
            // Amounts near the largest float: never a silent stand-in.
            return Err(ValueError::BadCustomer {
                index: out.rft.len() - 1,
                what: "the spend per purchase day does not add up to a finite number".into(),
            });
        }
        out.mean_repeat_spend.push(mean);
        if let (Some(h), Some(holdout)) = (holdout_end, out.holdout_purchases.as_mut()) {
            let n = purchase_days
                .iter()
                .filter(|(d, _)| *d > calibration_end && *d <= h)
                .count() as u32;
            holdout_total += n as u64;
            holdout.push(n);
        }
    }
    if out.is_empty() {
        return Err(ValueError::NoCustomers);
    }
    if let Some(h) = holdout_end {
        if holdout_total == 0 {
            return Err(ValueError::invalid(
            "holdout_end",
            format!(
                "no customer of the calibration period bought between {} and the holdout end {}: the holdout is empty",
                date(calibration_end + 1),
                date(h)
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segmentation::transactions::{BadRows, Line};

    fn log(lines: &[(u32, i32, f64)], customers: usize) -> TransactionLog {
        TransactionLog {
            customer_ids: (0..customers).map(|c| format!("C{c}")).collect(),
            lines: lines
                .iter()
                .map(|&(customer, day, spend)| Line {
                    customer,
                    day,
                    spend,
                    order: None,
                })
                .collect(),
            rows_read: lines.len(),
            bad_rows: BadRows::default(),
            delimiter: None,
            date_format: String::new(),
            future: Default::default(),
        }
    }

    #[test]
    fn days_are_purchases_and_refunds_net_into_the_day_before() {
        // Customer 0: days 0 (two lines), 7 and 14, a refund on day 10;
        // customer 1: only a refund.
        let l = log(
            &[
                (0, 0, 10.0),
                (0, 0, 5.0),
                (0, 7, 20.0),
                (0, 10, -8.0),
                (0, 14, 30.0),
                (1, 3, -4.0),
            ],
            2,
        );
        let s = summarise(&l, 14, None, TimeUnit::Day).unwrap();
        assert_eq!(s.customer, vec![0]);
        assert_eq!(
            s.rft[0],
            Rft {
                x: 2,
                t_x: 14.0,
                t: 14.0
            }
        );
        // Repeat days 7 (20 − 8) and 14 (30): mean 21.
        assert_eq!(s.mean_repeat_spend[0], 21.0);
    }

    #[test]
    fn refunds_after_the_calibration_end_are_not_seen_by_the_fit() {
        // Purchases on days 0, 7 and 14; refunds on day 10 (calibration)
        // and day 20 (after its end on day 14; the log runs to day 30).
        let l = log(
            &[
                (0, 0, 10.0),
                (0, 7, 20.0),
                (0, 10, -8.0),
                (0, 14, 30.0),
                (0, 20, -25.0),
                (0, 30, 40.0),
            ],
            1,
        );
        let s = summarise(&l, 14, None, TimeUnit::Day).unwrap();
        assert_eq!(s.rft[0].x, 2);
        // As if the log ended on day 14: days 7 (20 − 8) and 14 (30).
        assert_eq!(s.mean_repeat_spend[0], 21.0);
    }
}
