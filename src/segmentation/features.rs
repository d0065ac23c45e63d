//! Per-customer behaviour features from a transaction log.

use std::collections::HashSet;

use chrono::NaiveDate;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::error::SegmentationError;
use super::transactions::{date_of, day_number, TransactionLog};
use crate::error::Result;

/// The features, in column order. Days and the log's currency units.
pub const FEATURE_NAMES: [&str; 5] = [
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
];
pub const RECENCY: usize = 0;
pub const FREQUENCY: usize = 1;
pub const MONETARY: usize = 2;
pub const AVG_ORDER: usize = 3;
pub const TENURE: usize = 4;

/// What frequency counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrequencyBasis {
    /// Distinct order ids (when the log has an order column).
    Orders,
    /// Distinct days with a purchase (otherwise): several lines on one day
    /// are one visit.
    PurchaseDays,
}

impl FrequencyBasis {
    /// What frequency counts, in words.
    pub fn counts(self) -> &'static str {
        match self {
            FrequencyBasis::Orders => "distinct orders",
            FrequencyBasis::PurchaseDays => "distinct purchase days",
        }
    }

    /// How to read a log with this basis as the other.
    pub fn advice(self) -> &'static str {
        match self {
            FrequencyBasis::Orders => {
                "read the log without its order column (no --order-col; no `columns.order` over gRPC)"
            }
            FrequencyBasis::PurchaseDays => {
                "name the log's order column as when the model was fitted (--order-col; `columns.order` over gRPC)"
            }
        }
    }
}

/// Lines and customers left out of the features, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureNotes {
    /// Lines dated after the as-of date.
    pub lines_after_as_of: usize,
    /// Lines with negative spend (refunds, returns).
    pub refund_lines: usize,
    /// Customers with refunds but no purchase up to the as-of date.
    pub customers_without_purchase: usize,
    /// Lines left out when the log was read, dated after that day.
    #[serde(default)]
    pub future: super::transactions::FutureLines,
}

/// One row per customer with at least one purchase, in order of first
/// appearance in the log.
#[derive(Debug, Clone)]
pub struct CustomerFeatures {
    pub ids: Vec<String>,
    /// `n × 5`, columns as in [`FEATURE_NAMES`], original units. In f64:
    /// spend is money, and f32 keeps cents only below about 130,000 (and
    /// whole units below 16.7 million); the tables written must reconcile
    /// with the books.
    pub values: Array2<f64>,
    pub as_of: NaiveDate,
    pub frequency_basis: FrequencyBasis,
    pub notes: FeatureNotes,
}

#[derive(Clone, Copy)]
struct Acc {
    first: i32,
    last: i32,
    spend: f64,
    purchases: bool,
}

/// Spend as the books have it: binary sums of decimal amounts carry noise
/// in the last bits (12.50 + 7.30 + 0.10 = 19.900000000000002), which a
/// table written for finance must not show. Rounded to a millionth below a
/// billion; above, f64 holds no finer digit anyway.
fn money(v: f64) -> f64 {
    if v.abs() < 1e9 {
        (v * 1e6).round() / 1e6
    } else {
        v
    }
}

impl CustomerFeatures {
    /// The features as the kernels read them (f32).
    pub fn values_f32(&self) -> Array2<f32> {
        self.values.mapv(|v| v as f32)
    }
}

/// Computes recency, frequency, monetary, average order value and tenure as
/// of `as_of` (default: the day after the latest transaction).
///
/// - recency: days from the last purchase to `as_of`; tenure: from the first.
/// - frequency: distinct orders, or distinct purchase days when the log has
///   no order ids ([`FrequencyBasis`]).
/// - monetary: net spend — refunds are subtracted — floored at 0.
/// - average order value: monetary / frequency.
///
/// A line with spend ≥ 0 is a purchase; a negative one is a refund and only
/// lowers monetary. Lines after `as_of` are ignored, so a past `as_of`
/// rebuilds the features as they were then.
pub fn customer_features(
    log: &TransactionLog,
    as_of: Option<NaiveDate>,
) -> Result<CustomerFeatures> {
    let latest = log.lines.iter().map(|l| l.day).max();
    let as_of_day = match (as_of, latest) {
        (Some(d), _) => day_number(d),
        (None, Some(l)) => l + 1,
        (None, None) => day_number(chrono::Utc::now().date_naive()),
    };
    let as_of = date_of(as_of_day);
    let by_orders = log.lines.iter().any(|l| l.order.is_some());
    let mut acc = vec![
        Acc {
            first: i32::MAX,
            last: i32::MIN,
            spend: 0.0,
            purchases: false
        };
        log.customer_ids.len()
    ];
    let mut visits: HashSet<(u32, i64)> = HashSet::with_capacity(log.lines.len());
    let mut notes = FeatureNotes {
        future: log.future,
        ..FeatureNotes::default()
    };
    for line in &log.lines {
        if line.day > as_of_day {
            notes.lines_after_as_of += 1;
            continue;
        }
        let a = &mut acc[line.customer as usize];
        a.spend += line.spend;
        if line.spend < 0.0 {
            notes.refund_lines += 1;
            continue;
        }
        a.purchases = true;
        a.first = a.first.min(line.day);
        a.last = a.last.max(line.day);
        // Orders and days share one key space: a line without an order id in
        // an order-keyed log counts as a visit on its day.
        let key = match line.order {
            Some(o) if by_orders => o as i64,
            _ => (1i64 << 40) + line.day as i64,
        };
        visits.insert((line.customer, key));
    }
    let mut frequency = vec![0u32; acc.len()];
    for (c, _) in &visits {
        frequency[*c as usize] += 1;
    }
    let mut ids = Vec::new();
    let mut flat = Vec::new();
    for (c, a) in acc.iter().enumerate() {
        if !a.purchases {
            if a.spend != 0.0 || frequency[c] > 0 {
                notes.customers_without_purchase += 1;
            }
            continue;
        }
        let monetary = money(a.spend.max(0.0));
        let f = frequency[c] as f64;
        ids.push(log.customer_ids[c].clone());
        flat.extend([
            (as_of_day - a.last) as f64,
            f,
            monetary,
            money(monetary / f),
            (as_of_day - a.first) as f64,
        ]);
    }
    if ids.is_empty() {
        return Err(SegmentationError::NoCustomers { as_of }.into());
    }
    let values = Array2::from_shape_vec((ids.len(), FEATURE_NAMES.len()), flat).expect("5 per row");
    Ok(CustomerFeatures {
        ids,
        values,
        as_of,
        frequency_basis: if by_orders {
            FrequencyBasis::Orders
        } else {
            FrequencyBasis::PurchaseDays
        },
        notes,
    })
}
