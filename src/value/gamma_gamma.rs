//! The Gamma-Gamma spend model (Fader, Hardie & Lee, 2005, "RFM and CLV:
//! Using Iso-Value Curves"; Colombo & Jiang, 1999). Each purchase's value
//! is Gamma(p, ν) around the customer's own mean, with ν ~ Gamma(q, v)
//! across customers. It is fitted on the mean spend `m` of each customer's
//! `x ≥ 1` repeat purchase days:
//!
//! ```text
//! ln L = ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln v + (px−1) ln m + px ln x
//!        − (px+q) ln(v + x m)
//! ```
//!
//! The model assumes spend does not depend on how often a customer buys;
//! [`GammaGamma::fit`] measures that correlation and returns it so callers
//! can warn.

use serde::{Deserialize, Serialize};

use super::fit::{maximise, sum_rows, Fitted, LogLikelihood};
use super::special::{digamma, ln_gamma};
use super::ValueError;

/// The three Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

impl std::fmt::Display for GammaGammaParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p = {:.6}, q = {:.6}, v = {:.6}", self.p, self.q, self.v)
    }
}

/// Frequency and mean spend correlating above this (in absolute value)
/// deserves a warning: the model's independence assumption is in doubt.
pub const CORRELATION_WARNING: f64 = 0.3;

struct Likelihood<'a> {
    x: &'a [u32],
    m: &'a [f64],
    max_x: usize,
}

impl LogLikelihood for Likelihood<'_> {
    fn value_grad(&self, params: &[f64]) -> (f64, Vec<f64>) {
        let (p, q, v) = (params[0], params[1], params[2]);
        // Per distinct x: ln Γ(px+q) − ln Γ(px), px ln x, and the digammas.
        let per_x: Vec<[f64; 4]> = (0..=self.max_x)
            .map(|x| {
                let x = x as f64;
                if x == 0.0 {
                    return [0.0; 4];
                }
                let px = p * x;
                [
                    ln_gamma(px + q) - ln_gamma(px),
                    px * x.ln(),
                    digamma(px + q) - digamma(px),
                    digamma(px + q),
                ]
            })
            .collect();
        let (lq, dq, ln_v) = (ln_gamma(q), digamma(q), v.ln());
        sum_rows::<4>(self.x.len(), |i, acc| {
            let (x, m) = (self.x[i] as f64, self.m[i]);
            let t = &per_x[self.x[i] as usize];
            let (px, ln_m) = (p * x, m.ln());
            let ln_s = (v + x * m).ln();
            acc[0] += t[0] - lq + q * ln_v + (px - 1.0) * ln_m + t[1] - (px + q) * ln_s;
            acc[1] += x * (t[2] + ln_m + x.ln() - ln_s);
            acc[2] += t[3] - dq + ln_v - ln_s;
            acc[3] += q / v - (px + q) / (v + x * m);
        })
    }

    fn customers(&self) -> f64 {
        self.x.len() as f64
    }

    fn names(&self) -> &'static [&'static str] {
        &["p", "q", "v"]
    }
}

/// A fitted Gamma-Gamma model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGamma {
    pub params: GammaGammaParams,
}

/// A fit and the frequency–spend correlation it was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaFit {
    pub fitted: Fitted<GammaGammaParams>,
    /// Pearson correlation of `x` and mean spend over the fitted customers.
    pub correlation: f64,
    /// Customers fitted (`x ≥ 1` and a positive mean spend).
    pub customers: usize,
    /// Repeat customers left out for a mean spend of zero or less
    /// (refunds), which the model cannot describe.
    pub excluded_non_positive: usize,
    /// `p` has no finite maximum, so the fit is the model's limit
    /// ([`LIMIT_P`]): the spread of mean spend across customers does not
    /// shrink with more purchases as the model expects (spend per purchase
    /// that hardly varies within a customer, or spend that rises or falls
    /// with frequency).
    #[serde(default)]
    pub p_at_limit: bool,
}

impl GammaGammaFit {
    /// What to tell the user when the fit is the model's limit.
    pub fn limit_warning(&self) -> Option<String> {
        self.p_at_limit.then(|| {
            "the Gamma-Gamma fit found no finite p (mean spend does not settle with more purchases as the model expects: spend per purchase that hardly varies within a customer, or spend tied to frequency); fitted the model's limit, where a repeat customer's expected spend is their own mean spend".to_owned()
        })
    }

    /// The warning to show when spend and frequency correlate, if they do.
    pub fn correlation_warning(&self) -> Option<String> {
        (self.correlation.abs() > CORRELATION_WARNING).then(|| {
            format!(
                "purchase frequency and mean spend correlate (Pearson {:.2}): the Gamma-Gamma model assumes they do not, so expected spend may be biased",
                self.correlation
            )
        })
    }
}

impl GammaGamma {
    /// Fits on the customers with `x ≥ 1` and a positive finite mean spend
    /// (the rest are ignored, and counted).
    pub fn fit(x: &[u32], mean_spend: &[f64]) -> Result<GammaGammaFit, ValueError> {
        let (mut xs, mut ms) = (Vec::new(), Vec::new());
        let mut excluded = 0;
        for (&xi, &mi) in x.iter().zip(mean_spend) {
            if xi == 0 {
                continue;
            }
            if mi.is_finite() && mi > 0.0 {
                xs.push(xi);
                ms.push(mi);
            } else {
                excluded += 1;
            }
        }
        if xs.is_empty() {
            return Err(ValueError::NoRepeatCustomers);
        }
        let ll = Likelihood {
            x: &xs,
            m: &ms,
            max_x: xs.iter().copied().max().unwrap_or(0) as usize,
        };
        let mean_m = ms.iter().sum::<f64>() / ms.len() as f64;
        let starts = [
            vec![1.0, 2.0, mean_m],
            vec![3.0, 4.0, mean_m],
            vec![0.5, 1.5, 0.25 * mean_m],
        ];
        let (p, mut report) = maximise(&ll, &starts);
        let mut params = GammaGammaParams {
            p: p[0],
            q: p[1],
            v: p[2],
        };
        let unbounded = !report.converged && params.p >= LIMIT_P_FROM;
        let mut at_limit = false;
        if unbounded {
            match limit_fit(&ms) {
                // Taken where the optimiser ran p (or v, which falls as p
                // grows with p·v fixed) to its bound, or where
                // the limit is as likely as the best point it found: a
                // finite maximum it merely failed to settle on stays an
                // error. (Far out, ln Γ(px+q) − ln Γ(px) loses digits, so
                // a bound reached is trusted over a likelihood compared.)
                Some(limit)
                    if ["parameter p ran", "parameter v ran"]
                        .iter()
                        .any(|t| report.stop.starts_with(t))
                        || limit.log_likelihood
                            >= report.log_likelihood
                                - (1e-6 * report.log_likelihood.abs()).max(1e-3) =>
                {
                    params = GammaGammaParams {
                        p: LIMIT_P,
                        q: limit.q,
                        v: limit.rate / LIMIT_P,
                    };
                    report.converged = true;
                    report.log_likelihood = limit.log_likelihood;
                    report.gradient_norm = f64::NAN;
                    report.std_errors = vec![f64::NAN, limit.q_se, limit.rate_se / LIMIT_P];
                    report.stop = "p has no finite maximum: the model's limit".into();
                    at_limit = true;
                }
                Some(_) => {}
                None => {
                    return Err(ValueError::NotConverged {
                        model: "Gamma-Gamma",
                        reason: "every repeat customer has the same mean spend per purchase, so \
                                 the spend model has nothing to fit"
                            .into(),
                        best: params.to_string(),
                    })
                }
            }
        }
        if !report.converged {
            return Err(ValueError::NotConverged {
                model: "Gamma-Gamma",
                reason: format!(
                    "{} after {} iterations, gradient norm {:.2e}, log-likelihood {:.4}",
                    report.stop, report.iterations, report.gradient_norm, report.log_likelihood
                ),
                best: params.to_string(),
            });
        }
        if params.q <= 1.0 {
            return Err(ValueError::InfiniteSpend { q: params.q });
        }
        Ok(GammaGammaFit {
            correlation: pearson(&xs.iter().map(|&v| v as f64).collect::<Vec<_>>(), &ms),
            customers: xs.len(),
            excluded_non_positive: excluded,
            p_at_limit: at_limit,
            fitted: Fitted { params, report },
        })
    }

    /// Expected mean spend per purchase of a customer with `x` repeat
    /// purchase days and mean spend `m`: a weighted average of the
    /// population mean `p·v/(q−1)` and `m`. Customers without repeats, or
    /// with a mean of zero or less (refunds; left out of the fit), get the
    /// population mean.
    pub fn expected_spend(&self, x: u32, m: f64) -> f64 {
        let GammaGammaParams { p, q, v } = self.params;
        if x == 0 || !(m.is_finite() && m > 0.0) {
            return p * v / (q - 1.0);
        }
        let x = x as f64;
        p * (v + x * m) / (p * x + q - 1.0)
    }
}

/// A fit that stops with `p` at least this large has found no finite
/// maximum in `p` (the model would have purchases of one customer vary by
/// 1 % or less: their coefficient of variation is `1/√p`).
const LIMIT_P_FROM: f64 = 1e4;

/// `p` in the model's limit. A repeat customer's expected spend is then
/// their own mean up to a relative `(q − 1 − p·v/m) / (p·x)`: below 1e-5
/// for the `q` and `p·v/m` of real spend (up to a few hundred).
pub const LIMIT_P: f64 = 1e7;

/// The Gamma-Gamma model's limit as `p → ∞` with `p·v` fixed.
struct Limit {
    q: f64,
    /// `p·v`: `1/m ~ Gamma(q, rate)`.
    rate: f64,
    q_se: f64,
    rate_se: f64,
    /// Of the means under the limit (inverse-gamma densities), the value
    /// the Gamma-Gamma log-likelihood tends to as `p` grows.
    log_likelihood: f64,
}

/// As `p → ∞` with `p·v` fixed, each customer's mean spend is their true
/// mean `ζ`, and `1/ζ ~ Gamma(q, rate p·v)` across customers. Fitted by
/// maximum likelihood on `1/m` (`ln q − ψ(q) = ln ȳ − mean ln y`, solved by
/// bisection on `ln q`: the left side falls from ∞ to 0; the rate is
/// `q/ȳ`), with standard errors from the Gamma's Fisher information.
/// `None` when every mean is the same (no spread left to fit).
fn limit_fit(m: &[f64]) -> Option<Limit> {
    let n = m.len() as f64;
    let mean_y = m.iter().map(|v| 1.0 / v).sum::<f64>() / n;
    let mean_ln_m = m.iter().map(|v| v.ln()).sum::<f64>() / n;
    let s = mean_y.ln() + mean_ln_m;
    if !(s.is_finite() && s > 1e-12) {
        return None;
    }
    let (mut lo, mut hi) = (-20.0f64, 30.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let q = mid.exp();
        if q.ln() - digamma(q) > s {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let q = (0.5 * (lo + hi)).exp();
    let rate = q / mean_y;
    // ψ′(q) by a central difference of ψ: ample for a standard error.
    let h = 1e-4 * q;
    let trigamma = (digamma(q + h) - digamma(q - h)) / (2.0 * h);
    let det = q * trigamma - 1.0;
    let (q_se, rate_se) = if det > 0.0 {
        (
            (q / (n * det)).sqrt(),
            (rate * rate * trigamma / (n * det)).sqrt(),
        )
    } else {
        (f64::NAN, f64::NAN)
    };
    // Σ ln InvGamma(m; q, rate) = n(q ln rate − ln Γ(q)) − (q + 1)Σ ln m − rate·Σ 1/m.
    let log_likelihood = n * (q * rate.ln() - ln_gamma(q) - (q + 1.0) * mean_ln_m - rate * mean_y);
    Some(Limit {
        q,
        rate,
        q_se,
        rate_se,
        log_likelihood,
    })
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return 0.0;
    }
    sab / (saa * sbb).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_analytic_gradient_matches_finite_differences() {
        let (x, m) = ([1u32, 2, 5, 3], [20.0, 35.5, 12.0, 60.0]);
        let ll = Likelihood {
            x: &x,
            m: &m,
            max_x: 5,
        };
        let p = [2.1, 3.4, 15.0];
        crate::value::fit::assert_gradient(&ll, &p);
    }

    /// Every purchase of a customer costs the same (a subscription's
    /// price, say): `p` runs away, and the limit is fitted instead. Its
    /// `q` and `p·v` are the Gamma MLE of `1/m`, and each repeat customer's
    /// expected spend is their own mean.
    #[test]
    fn an_unbounded_p_fits_the_limit() {
        // Prices 1/y with y spread like a Gamma(4, rate 100) sample.
        let prices = [
            18.5, 22.0, 25.0, 29.9, 31.0, 35.5, 40.0, 44.0, 52.0, 61.0, 75.0, 99.0,
        ];
        let (mut x, mut m) = (Vec::new(), Vec::new());
        for (i, &price) in prices.iter().cycle().take(600).enumerate() {
            x.push(1 + (i % 7) as u32);
            m.push(price);
        }
        let fit = GammaGamma::fit(&x, &m).unwrap();
        assert!(fit.p_at_limit, "{:?}", fit.fitted);
        assert!(fit.limit_warning().is_some());
        let GammaGammaParams { p, q, v } = fit.fitted.params;
        assert_eq!(p, LIMIT_P);
        // The Gamma MLE's condition holds at q, and the rate is q / ȳ.
        let y: Vec<f64> = m.iter().map(|v| 1.0 / v).collect();
        let mean_y = y.iter().sum::<f64>() / y.len() as f64;
        let mean_ln_y = y.iter().map(|v| v.ln()).sum::<f64>() / y.len() as f64;
        let s = mean_y.ln() - mean_ln_y;
        assert!((q.ln() - digamma(q) - s).abs() < 1e-9, "q = {q}");
        assert!((p * v - q / mean_y).abs() < 1e-9 * q / mean_y);
        let gg = GammaGamma {
            params: fit.fitted.params,
        };
        for &price in &prices {
            assert!((gg.expected_spend(1, price) / price - 1.0).abs() < 1e-5);
        }
        // Standard errors for q and v; none for p, which is not a point.
        let se = &fit.fitted.report.std_errors;
        assert!(se[0].is_nan() && se[1] > 0.0 && se[2] > 0.0, "{se:?}");
        // The limit's log-likelihood is the Gamma-Gamma's as p grows.
        let ll = Likelihood {
            x: &x,
            m: &m,
            max_x: 7,
        };
        let (at_1e9, _) = ll.value_grad(&[1e9, q, p * v / 1e9]);
        let limit = fit.fitted.report.log_likelihood;
        assert!(
            (at_1e9 - limit).abs() < 1e-3 * limit.abs(),
            "{at_1e9} vs {limit}"
        );
        // Nothing to fit when every customer's mean is the same: said so.
        let same = [25.0; 50];
        let e = GammaGamma::fit(&[2; 50], &same).unwrap_err();
        assert!(e.to_string().contains("the same mean spend"), "{e}");
    }

    #[test]
    fn expected_spend_weighs_the_population_and_the_customer() {
        let gg = GammaGamma {
            params: GammaGammaParams {
                p: 6.25,
                q: 3.74,
                v: 15.44,
            },
        };
        let population = 6.25 * 15.44 / 2.74;
        assert!((gg.expected_spend(0, f64::NAN) - population).abs() < 1e-12);
        // (q − 1)/(px + q − 1)·population + px/(px + q − 1)·m
        let (x, m) = (4u32, 50.0);
        let px = 6.25 * 4.0;
        let want = 2.74 / (px + 2.74) * population + px / (px + 2.74) * m;
        assert!((gg.expected_spend(x, m) - want).abs() < 1e-9);
        // A refunded-to-zero or negative mean gets the population's.
        assert_eq!(gg.expected_spend(3, -5.0), gg.expected_spend(0, f64::NAN));
        // More purchases: closer to the customer's own mean.
        assert!((gg.expected_spend(40, m) - m).abs() < (gg.expected_spend(1, m) - m).abs());
    }
}
