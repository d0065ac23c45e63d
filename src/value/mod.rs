//! Customer value: who will buy again, how much, and what they are worth.
//!
//! - [`summary`]: per customer `(x, t_x, T)` (repeat purchase days, the
//!   time of the last, the time observed) and the mean repeat spend, from a
//!   transaction log and a calibration end date.
//! - [`bgnbd`]: the BG/NBD purchase model (Fader, Hardie & Lee, 2005,
//!   "Counting Your Customers the Easy Way"): `P(alive)` and expected
//!   purchases.
//! - [`gamma_gamma`]: the Gamma-Gamma spend model (Fader, Hardie & Lee,
//!   2005, "RFM and CLV: Using Iso-Value Curves"): expected spend.
//! - [`clv`]: lifetime value over a horizon, value tiers and churn risk.
//! - [`job`]: the whole job on a transaction log, holdout check and
//!   outputs (`segmenta clv`), with the report `clv.html`.
//! - [`fit`]: maximum likelihood over log-parameters (L-BFGS), standard
//!   errors from the observed information.
//! - [`special`]: ln Γ, ψ and the hypergeometric ₂F₁.
//! - [`simulate`]: customers drawn from both models, for tests and
//!   benchmarks.

pub mod bgnbd;
pub mod clv;
pub mod fit;
pub mod gamma_gamma;
pub mod job;
mod report;
pub mod simulate;
pub mod special;
pub mod summary;

pub use bgnbd::{BgNbd, BgNbdParams};

/// Why the value models take no order column, wherever one is refused.
pub const COUNTS_PURCHASE_DAYS: &str = "its models count purchase days (several orders on one \
     day are one purchase, as in the BG/NBD paper)";
pub use clv::{ChurnRisk, ChurnThresholds, ValueTier};
pub use fit::{FitReport, Fitted};
pub use gamma_gamma::{GammaGamma, GammaGammaParams};
pub use job::{
    run_clv, value_as_of, write_clv_outputs, ClvFiles, ClvParams, ClvRun, ClvSummary, ValueOptions,
};
pub use summary::{Rft, TimeUnit};

/// What can go wrong fitting or applying the value models.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("no customer has a repeat purchase: the models need some customers who bought on at least two days")]
    NoRepeatCustomers,
    #[error("no customers to fit")]
    NoCustomers,
    #[error("customer {index}: {what}")]
    BadCustomer { index: usize, what: String },
    /// The optimiser stopped short of a maximum; the best parameters it
    /// found are in the message, never used silently.
    #[error("the {model} fit did not converge ({reason}); best parameters found: {best}")]
    NotConverged {
        model: &'static str,
        reason: String,
        best: String,
    },
    #[error("the Gamma-Gamma fit gives q = {q:.4} ≤ 1: customers' typical order values differ so widely (a few spend far more per order than the rest) that expected spend is undefined; leave out wholesale or outlier customers, or use the monetary feature instead")]
    InfiniteSpend { q: f64 },
    #[error(transparent)]
    Hyp2f1(#[from] special::Hyp2f1Error),
    #[error("cancelled")]
    Cancelled,
    /// An option or date that cannot work, with the request field it is.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl ValueError {
    /// The error without the log's own dates (its first and last purchase,
    /// written ` (YYYY-MM-DD)`): a service's job records never quote a
    /// cell of the log. The dates of the request stay.
    pub fn without_log_dates(self) -> Self {
        match self {
            Self::Invalid { field, message } => {
                let mut out = String::with_capacity(message.len());
                let mut rest = message.as_str();
                while let Some(at) = rest.find(" (") {
                    let tail = &rest[at + 2..];
                    let is_date = tail.len() >= 11
                        && tail.as_bytes()[10] == b')'
                        && chrono::NaiveDate::parse_from_str(&tail[..10], "%Y-%m-%d").is_ok();
                    out.push_str(&rest[..at]);
                    if is_date {
                        rest = &tail[11..];
                    } else {
                        out.push_str(" (");
                        rest = tail;
                    }
                }
                out.push_str(rest);
                Self::Invalid {
                    field,
                    message: out,
                }
            }
            other => other,
        }
    }

    pub(crate) fn invalid(field: &'static str, message: String) -> Self {
        Self::Invalid { field, message }
    }
}
