//! The BG/NBD purchase model (Fader, Hardie & Lee, 2005, "Counting Your
//! Customers the Easy Way"). While alive, a customer buys as a Poisson
//! process with rate λ ~ Gamma(r, α); after each repeat purchase they drop
//! out with probability p ~ Beta(a, b).
//!
//! The log-likelihood of one customer, written so nothing overflows (no
//! (α+T)^(r+x) is ever formed, the sum of the two cases is a softplus):
//!
//! ```text
//! ln L = g(x) + r ln α − (r+x) ln(α+T) + 1[x>0] · softplus(s)
//! g(x) = ln Γ(r+x) − ln Γ(r) + ln B(a, b+x) − ln B(a, b)
//! s    = ln a − ln(b+x−1) + (r+x) (ln(α+T) − ln(α+t_x))
//! ```
//!
//! `g` and its derivatives depend on `x` only, and are computed once per
//! distinct `x`; customers with identical `(x, t_x, T)` are fitted as one
//! row with a count ([`Grouped`]), exactly.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::fit::{maximise, sum_rows, Fitted, LogLikelihood};
use super::special::{digamma, hyp2f1, ln_gamma};
use super::summary::Rft;
use super::ValueError;

/// The four BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

impl BgNbdParams {
    fn to_vec(self) -> Vec<f64> {
        vec![self.r, self.alpha, self.a, self.b]
    }

    fn from_slice(p: &[f64]) -> Self {
        Self {
            r: p[0],
            alpha: p[1],
            a: p[2],
            b: p[3],
        }
    }
}

impl std::fmt::Display for BgNbdParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "r = {:.6}, alpha = {:.6}, a = {:.6}, b = {:.6}",
            self.r, self.alpha, self.a, self.b
        )
    }
}

/// Customers as distinct `(x, t_x, T)` rows with counts.
#[derive(Debug, Clone)]
pub struct Grouped {
    pub x: Vec<u32>,
    pub t_x: Vec<f64>,
    pub t: Vec<f64>,
    pub count: Vec<f64>,
}

impl Grouped {
    /// Groups identical rows when `group` is set (bit-identical times); one
    /// row per customer otherwise. Rows are checked first.
    pub fn new(rows: &[Rft], group: bool) -> Result<Self, ValueError> {
        for (i, r) in rows.iter().enumerate() {
            r.check(i)?;
        }
        let mut out = Self {
            x: Vec::new(),
            t_x: Vec::new(),
            t: Vec::new(),
            count: Vec::new(),
        };
        if !group {
            for r in rows {
                out.push(r, 1.0);
            }
            return Ok(out);
        }
        let mut index: HashMap<(u32, u64, u64), usize> = HashMap::new();
        for r in rows {
            let key = (r.x, r.t_x.to_bits(), r.t.to_bits());
            match index.get(&key) {
                Some(&i) => out.count[i] += 1.0,
                None => {
                    index.insert(key, out.x.len());
                    out.push(r, 1.0);
                }
            }
        }
        Ok(out)
    }

    fn push(&mut self, r: &Rft, count: f64) {
        self.x.push(r.x);
        self.t_x.push(r.t_x);
        self.t.push(r.t);
        self.count.push(count);
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
}

/// Per distinct `x`: `g(x)`, `ln a − ln(b+x−1)` and the derivatives of `g`.
struct XTerms {
    g: f64,
    ln_ratio: f64,
    dg: [f64; 4],
}

struct Likelihood<'a> {
    data: &'a Grouped,
    max_x: usize,
    customers: f64,
}

impl Likelihood<'_> {
    fn x_terms(&self, p: &BgNbdParams) -> Vec<XTerms> {
        let BgNbdParams { r, a, b, .. } = *p;
        let base = ln_gamma(a + b) - ln_gamma(b);
        (0..=self.max_x)
            .map(|x| {
                let x = x as f64;
                XTerms {
                    g: ln_gamma(r + x) - ln_gamma(r) + ln_gamma(b + x) - ln_gamma(a + b + x) + base,
                    ln_ratio: if x > 0.0 {
                        a.ln() - (b + x - 1.0).ln()
                    } else {
                        0.0
                    },
                    dg: [
                        digamma(r + x) - digamma(r),
                        0.0,
                        digamma(a + b) - digamma(a + b + x),
                        digamma(b + x) - digamma(b) + digamma(a + b) - digamma(a + b + x),
                    ],
                }
            })
            .collect()
    }
}

/// `ln(1 + eˢ)` and `1 / (1 + e⁻ˢ)` without overflow.
fn softplus_sigmoid(s: f64) -> (f64, f64) {
    if s > 0.0 {
        let e = (-s).exp();
        (s + e.ln_1p(), 1.0 / (1.0 + e))
    } else {
        let e = s.exp();
        (e.ln_1p(), e / (1.0 + e))
    }
}

impl LogLikelihood for Likelihood<'_> {
    fn value_grad(&self, p: &[f64]) -> (f64, Vec<f64>) {
        let params = BgNbdParams::from_slice(p);
        let BgNbdParams { r, alpha, a, b } = params;
        let terms = self.x_terms(&params);
        let ln_alpha = alpha.ln();
        let d = self.data;
        sum_rows::<5>(d.len(), |i, acc| {
            let (x, w) = (d.x[i], d.count[i]);
            let xt = &terms[x as usize];
            let xf = x as f64;
            let rx = r + xf;
            let u = (alpha + d.t[i]).ln();
            let inv_t = 1.0 / (alpha + d.t[i]);
            let mut ll = xt.g + r * ln_alpha - rx * u;
            let mut g = [
                xt.dg[0] + ln_alpha - u,
                r / alpha - rx * inv_t,
                xt.dg[2],
                xt.dg[3],
            ];
            if x > 0 {
                let v = (alpha + d.t_x[i]).ln();
                let (sp, sig) = softplus_sigmoid(xt.ln_ratio + rx * (u - v));
                ll += sp;
                g[0] += sig * (u - v);
                g[1] += sig * rx * (inv_t - 1.0 / (alpha + d.t_x[i]));
                g[2] += sig / a;
                g[3] -= sig / (b + xf - 1.0);
            }
            acc[0] += w * ll;
            for j in 0..4 {
                acc[j + 1] += w * g[j];
            }
        })
    }

    fn names(&self) -> &'static [&'static str] {
        &["r", "alpha", "a", "b"]
    }

    fn customers(&self) -> f64 {
        self.customers
    }
}

/// The fitted model and what it predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgNbd {
    pub params: BgNbdParams,
}

impl BgNbd {
    /// Fits by maximum likelihood. `group` fits identical `(x, t_x, T)` rows
    /// once with a count (the same optimum, faster). Refuses data without
    /// repeat customers; returns [`ValueError::NotConverged`] with the best
    /// parameters found when no start reaches a maximum.
    pub fn fit(rows: &[Rft], group: bool) -> Result<Fitted<BgNbdParams>, ValueError> {
        if rows.is_empty() {
            return Err(ValueError::NoCustomers);
        }
        if rows.iter().all(|r| r.x == 0) {
            return Err(ValueError::NoRepeatCustomers);
        }
        let data = Grouped::new(rows, group)?;
        let ll = Likelihood {
            max_x: data.x.iter().copied().max().unwrap_or(0) as usize,
            customers: rows.len() as f64,
            data: &data,
        };
        // Starting values: a rate of one purchase per mean observed time
        // (r = 1, α = mean T), and an even dropout prior; then wider ones.
        let mean_t = (rows.iter().map(|r| r.t).sum::<f64>() / rows.len() as f64).max(1e-3);
        let starts = [
            vec![1.0, mean_t, 1.0, 1.0],
            vec![0.1, 0.1 * mean_t, 0.5, 2.0],
            vec![5.0, 5.0 * mean_t, 2.0, 5.0],
        ];
        let (p, report) = maximise(&ll, &starts);
        let params = BgNbdParams::from_slice(&p);
        if !report.converged {
            return Err(ValueError::NotConverged {
                model: "BG/NBD",
                reason: format!(
                    "{} after {} iterations, gradient norm {:.2e}, log-likelihood {:.4}",
                    report.stop, report.iterations, report.gradient_norm, report.log_likelihood
                ),
                best: params.to_string(),
            });
        }
        Ok(Fitted { params, report })
    }

    /// The log-likelihood of `rows` under `params` (for tests and reports).
    pub fn log_likelihood(params: &BgNbdParams, rows: &[Rft]) -> Result<f64, ValueError> {
        let data = Grouped::new(rows, false)?;
        let ll = Likelihood {
            max_x: data.x.iter().copied().max().unwrap_or(0) as usize,
            customers: rows.len() as f64,
            data: &data,
        };
        Ok(ll.value_grad(&params.to_vec()).0)
    }

    /// The probability that a customer with history `h` is still alive at
    /// `T`: 1 without a repeat purchase, else `1 / (1 + eˢ)`.
    pub fn p_alive(&self, h: &Rft) -> f64 {
        if h.x == 0 {
            return 1.0;
        }
        let BgNbdParams { r, alpha, a, b } = self.params;
        let x = h.x as f64;
        let s = a.ln() - (b + x - 1.0).ln() + (r + x) * ((alpha + h.t).ln() - (alpha + h.t_x).ln());
        // 1 / (1 + eˢ), accurate for large s too.
        softplus_sigmoid(-s).1
    }

    /// Expected purchases in the next `t` time units of a customer with
    /// history `h` (Fader, Hardie & Lee 2005, eq. 10).
    pub fn expected_purchases(&self, h: &Rft, t: f64) -> Result<f64, ValueError> {
        Ok(self.expected_if_alive(h.x, h.t, t)? * self.p_alive(h))
    }

    /// Expected purchases in `(T, T + t]` given alive at `T`, which depends
    /// on `x` and `T` only (not on `t_x`): callers memoise on `(x, T)`.
    pub fn expected_if_alive(&self, x: u32, big_t: f64, t: f64) -> Result<f64, ValueError> {
        self.bracket(x as f64, self.params.alpha + big_t, t)
    }

    /// Expected purchases of a new customer in their first `t` time units
    /// (eq. 9): the same form with `x = 0` from `α` alone.
    pub fn expected_new(&self, t: f64) -> Result<f64, ValueError> {
        self.bracket(0.0, self.params.alpha, t)
    }

    /// `c/(a−1) · (1 − y^(r+x) ₂F₁(r+x, b+x; c; z))` with `c = a+b+x−1`,
    /// `z = t/(s+t)` and `y = 1 − z = s/(s+t)` (`s = α + T`). Euler's
    /// transformation turns `y^(r+x) ₂F₁(r+x, b+x; c; z)` into
    /// `y^(a−1) ₂F₁(a+b−1−r, a−1; c; z)`: the same value, but neither
    /// factor under- or overflows for heavy buyers over long horizons,
    /// where the first form multiplies 0 by ∞.
    fn bracket(&self, x: f64, s: f64, t: f64) -> Result<f64, ValueError> {
        if t <= 0.0 {
            return Ok(0.0);
        }
        let BgNbdParams { r, b, .. } = self.params;
        let (z, ln_y) = (t / (s + t), s.ln() - (s + t).ln());
        let at = |a: f64| -> Result<f64, ValueError> {
            let c = a + b + x - 1.0;
            let f = hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)?;
            Ok(c / (a - 1.0) * (1.0 - ((a - 1.0) * ln_y).exp() * f))
        };
        limit_at_one(self.params.a, at)
    }
}

/// `f(a)` for a formula with a removable singularity at `a = 1` (a
/// division by `a − 1`): near it, the mean of `f` on either side.
fn limit_at_one(a: f64, f: impl Fn(f64) -> Result<f64, ValueError>) -> Result<f64, ValueError> {
    const NEAR: f64 = 1e-5;
    if (a - 1.0).abs() < NEAR {
        return Ok((f(1.0 - NEAR)? + f(1.0 + NEAR)?) / 2.0);
    }
    f(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdnow() -> BgNbd {
        // The paper's CDNOW estimates (weeks).
        BgNbd {
            params: BgNbdParams {
                r: 0.243,
                alpha: 4.414,
                a: 0.793,
                b: 2.426,
            },
        }
    }

    #[test]
    fn the_analytic_gradient_matches_finite_differences() {
        let rows = [
            Rft {
                x: 0,
                t_x: 0.0,
                t: 30.0,
            },
            Rft {
                x: 2,
                t_x: 20.0,
                t: 35.0,
            },
            Rft {
                x: 7,
                t_x: 33.0,
                t: 38.5,
            },
            Rft {
                x: 1,
                t_x: 0.5,
                t: 12.0,
            },
        ];
        let data = Grouped::new(&rows, false).unwrap();
        let ll = Likelihood {
            data: &data,
            max_x: 7,
            customers: 4.0,
        };
        let p = [0.5, 3.0, 0.8, 2.5];
        crate::value::fit::assert_gradient(&ll, &p);
    }

    #[test]
    fn p_alive_is_one_without_repeats_and_stable_for_heavy_buyers() {
        let m = cdnow();
        assert_eq!(
            m.p_alive(&Rft {
                x: 0,
                t_x: 0.0,
                t: 50.0
            }),
            1.0
        );
        // Many purchases long ago: alive with a tiny probability, no NaN.
        let p = m.p_alive(&Rft {
            x: 500,
            t_x: 1.0,
            t: 5000.0,
        });
        assert!((0.0..1e-100).contains(&p), "{p}");
        // Bought recently: more likely alive than a peer who stopped.
        let recent = m.p_alive(&Rft {
            x: 3,
            t_x: 37.0,
            t: 38.0,
        });
        let lapsed = m.p_alive(&Rft {
            x: 3,
            t_x: 5.0,
            t: 38.0,
        });
        assert!(recent > lapsed);
    }

    #[test]
    fn heavy_buyers_over_long_horizons_stay_finite() {
        // y^(r+x) underflows and ₂F₁(r+x, b+x; c; z) overflows here; the
        // Euler form multiplies neither.
        let m = cdnow();
        let h = Rft {
            x: 700,
            t_x: 729.0,
            t: 730.0,
        };
        for t in [1.0, 52.0, 5_000.0, 100_000.0] {
            let e = m.expected_purchases(&h, t).unwrap();
            assert!(e.is_finite() && e > 0.0, "t = {t}: {e}");
        }
        // More time, more purchases.
        let short = m.expected_purchases(&h, 52.0).unwrap();
        let long = m.expected_purchases(&h, 520.0).unwrap();
        assert!(long > short);
    }

    #[test]
    fn expected_purchases_are_continuous_through_a_equal_one() {
        let mut m = cdnow();
        let h = Rft {
            x: 2,
            t_x: 20.0,
            t: 30.0,
        };
        m.params.a = 1.0;
        let at_one = m.expected_purchases(&h, 10.0).unwrap();
        m.params.a = 1.001;
        let near = m.expected_purchases(&h, 10.0).unwrap();
        assert!((at_one - near).abs() < 1e-3 * near, "{at_one} vs {near}");
    }
}
