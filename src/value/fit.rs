//! Maximum likelihood for the value models: L-BFGS (argmin) over the logs
//! of the parameters, which keeps every parameter positive without a
//! constraint the optimiser could stall on, and keeps steps relative (a
//! scale parameter of 50 and a shape of 0.2 move alike). The objective is
//! the mean negative log-likelihood per customer, so tolerances do not
//! depend on the number of customers.
//!
//! Standard errors come from the observed information: the Hessian of the
//! total log-likelihood at the optimum, by central differences of the
//! analytic gradient, inverted.

use std::sync::{Arc, Mutex};

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

/// Rows per parallel block of a likelihood sum.
const BLOCK: usize = 16_384;

/// Σ over rows `0..n` of what `row(i, acc)` adds into `acc`, in parallel
/// blocks added in order (the same bits on every run), returned as the
/// log-likelihood (`acc[0]`) and its gradient (the rest).
pub(crate) fn sum_rows<const N: usize>(
    n: usize,
    row: impl Fn(usize, &mut [f64; N]) + Sync,
) -> (f64, Vec<f64>) {
    use rayon::prelude::*;
    let blocks: Vec<[f64; N]> = (0..n)
        .into_par_iter()
        .step_by(BLOCK)
        .map(|start| {
            let mut acc = [0.0f64; N];
            for i in start..(start + BLOCK).min(n) {
                row(i, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = [0.0f64; N];
    for b in &blocks {
        for (t, v) in total.iter_mut().zip(b) {
            *t += v;
        }
    }
    (total[0], total[1..].to_vec())
}

/// A log-likelihood over positive parameters, summed over customers.
pub(crate) trait LogLikelihood: Sync {
    /// The log-likelihood and its gradient at `p`.
    fn value_grad(&self, p: &[f64]) -> (f64, Vec<f64>);
    /// Customers the sum runs over (the objective is per customer).
    fn customers(&self) -> f64;
    /// The parameters' names, in order, for messages.
    fn names(&self) -> &'static [&'static str];
}

/// How a fit ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    pub iterations: u64,
    /// Euclidean norm of the gradient of the mean log-likelihood per
    /// customer, with respect to the log-parameters, at the optimum.
    pub gradient_norm: f64,
    pub log_likelihood: f64,
    pub converged: bool,
    /// Why the optimiser stopped, in words.
    pub stop: String,
    /// One per parameter, in parameter order (`NaN` where the observed
    /// information is not positive definite).
    pub std_errors: Vec<f64>,
}

/// A fitted model's parameters and how the fit went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fitted<P> {
    pub params: P,
    pub report: FitReport,
}

/// Largest |log-parameter| evaluated: beyond e^±30 the optimiser has run
/// away along a flat likelihood.
const MAX_LOG: f64 = 30.0;
/// A maximum with a |log-parameter| beyond this (e^±15: 3e-7 or 3e6) is
/// taken for a parameter running to its bound, not a maximum.
const BOUND_LOG: f64 = 15.0;
/// Gradient norm (per customer, in log-parameters) at which a fit counts
/// as converged.
pub const GRADIENT_TOLERANCE: f64 = 1e-5;
/// L-BFGS iterations per start.
const MAX_ITERS: u64 = 500;

/// A point, its cost and its gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);
/// The lowest-cost point so far and its cost, shared with the caller.
type BestSoFar = Arc<Mutex<Option<(Vec<f64>, f64)>>>;

struct Problem<'a> {
    ll: &'a dyn LogLikelihood,
    scale: f64,
    /// The last point evaluated: argmin asks for the cost and the gradient
    /// separately, and both come from one pass over the customers.
    last: Mutex<Option<Evaluated>>,
    /// The lowest cost evaluated so far, kept outside the executor: when a
    /// run fails, it is the best parameters found.
    best: BestSoFar,
}

impl<'a> Problem<'a> {
    fn new(ll: &'a dyn LogLikelihood, best: BestSoFar) -> Self {
        Self {
            ll,
            scale: ll.customers().max(1.0),
            last: Mutex::new(None),
            best,
        }
    }
}

impl Problem<'_> {
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>), argmin::core::Error> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, c, g)) = last.as_ref() {
            if t.as_slice() == theta {
                return Ok((*c, g.clone()));
            }
        }
        if let Some(i) = theta
            .iter()
            .position(|t| !t.is_finite() || t.abs() > MAX_LOG)
        {
            let name = self.ll.names().get(i).copied().unwrap_or("?");
            return Err(argmin::core::Error::msg(format!(
                "parameter {name} ran past e^±{MAX_LOG}"
            )));
        }
        let p: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
        let (ll, g) = self.ll.value_grad(&p);
        let cost = -ll / self.scale;
        let grad: Vec<f64> = g
            .iter()
            .zip(&p)
            .map(|(gi, pi)| -gi * pi / self.scale)
            .collect();
        if !cost.is_finite() || grad.iter().any(|v| !v.is_finite()) {
            return Err(argmin::core::Error::msg(
                "the log-likelihood is not finite there",
            ));
        }
        *last = Some((theta.to_vec(), cost, grad.clone()));
        let mut best = self.best.lock().unwrap_or_else(|e| e.into_inner());
        if best.as_ref().is_none_or(|(_, c)| cost < *c) {
            *best = Some((theta.to_vec(), cost));
        }
        Ok((cost, grad))
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, theta: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.eval(theta)?.0)
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, theta: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.eval(theta)?.1)
    }
}

/// One L-BFGS run from `start` (natural parameters).
fn run(ll: &dyn LogLikelihood, start: &[f64]) -> (Vec<f64>, FitReport) {
    let best = Arc::new(Mutex::new(None));
    let problem = Problem::new(ll, best.clone());
    let theta0: Vec<f64> = start.iter().map(|p| p.ln()).collect();
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(GRADIENT_TOLERANCE * 1e-2)
        .and_then(|s| s.with_tolerance_cost(1e-15));
    let outcome = solver.and_then(|solver| {
        Executor::new(problem, solver)
            .configure(|s| s.param(theta0.clone()).max_iters(MAX_ITERS))
            .run()
    });
    // A failed run reports the best point it evaluated (or the start).
    let scale = ll.customers().max(1.0);
    let failed = |stop: String| {
        let found = best.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (params, log_likelihood) = match found {
            Some((theta, cost)) => (theta.iter().map(|t| t.exp()).collect(), -cost * scale),
            None => (start.to_vec(), f64::NEG_INFINITY),
        };
        (
            params,
            FitReport {
                iterations: 0,
                gradient_norm: f64::NAN,
                log_likelihood,
                converged: false,
                stop,
                std_errors: vec![f64::NAN; start.len()],
            },
        )
    };
    let result = match outcome {
        Ok(r) => r,
        Err(e) => return failed(e.to_string()),
    };
    let state = result.state();
    let Some(theta) = state.get_best_param().cloned() else {
        return failed("no parameters were evaluated".into());
    };
    let problem = Problem::new(ll, Arc::new(Mutex::new(None)));
    let (cost, grad) = match problem.eval(&theta) {
        Ok(v) => v,
        Err(e) => return failed(e.to_string()),
    };
    let gradient_norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    let reason = state.get_termination_reason();
    let mut stop = reason.map_or("stopped".to_string(), |r| r.text().to_string());
    let mut converged = gradient_norm <= GRADIENT_TOLERANCE
        && !matches!(reason, Some(TerminationReason::MaxItersReached));
    if let Some(i) = theta.iter().position(|t| t.abs() > BOUND_LOG) {
        converged = false;
        stop = format!(
            "parameter {} ran to e^±{BOUND_LOG} (no finite maximum)",
            ll.names().get(i).copied().unwrap_or("?")
        );
    }
    let params: Vec<f64> = theta.iter().map(|t| t.exp()).collect();
    (
        params,
        FitReport {
            iterations: state.get_iter(),
            gradient_norm,
            log_likelihood: -cost * problem.scale,
            converged,
            stop,
            std_errors: Vec::new(),
        },
    )
}

/// Maximises `ll` from each start in turn until one converges, keeping
/// the best; fills in the standard errors.
pub(crate) fn maximise(ll: &dyn LogLikelihood, starts: &[Vec<f64>]) -> (Vec<f64>, FitReport) {
    let mut best: Option<(Vec<f64>, FitReport)> = None;
    for start in starts {
        let (p, report) = run(ll, start);
        let converged = report.converged;
        let better = best.as_ref().is_none_or(|(_, b)| {
            (report.converged && !b.converged)
                || (report.converged == b.converged && report.log_likelihood > b.log_likelihood)
        });
        if better {
            best = Some((p, report));
        }
        if converged {
            break;
        }
    }
    let (p, mut report) = best.expect("at least one start");
    report.std_errors = std_errors(ll, &p);
    if report.converged && report.std_errors.iter().any(|s| !s.is_finite()) {
        // No curvature in some direction: a ridge or a plateau, not a
        // maximum the data pins down.
        report.converged = false;
        report.stop = "the observed information is not positive definite (a parameter is not identified by the data)".into();
    }
    (p, report)
}

/// Standard errors from the inverse of the observed information `−H`.
pub(crate) fn std_errors(ll: &dyn LogLikelihood, p: &[f64]) -> Vec<f64> {
    let n = p.len();
    let mut h = DMatrix::<f64>::zeros(n, n);
    for j in 0..n {
        let step = 1e-5 * p[j].abs().max(1e-8);
        let (mut up, mut down) = (p.to_vec(), p.to_vec());
        up[j] += step;
        down[j] -= step;
        let (gu, gd) = (ll.value_grad(&up).1, ll.value_grad(&down).1);
        for i in 0..n {
            h[(i, j)] = (gu[i] - gd[i]) / (2.0 * step);
        }
    }
    let info = -(&h + h.transpose()) / 2.0;
    match info.cholesky() {
        Some(c) => {
            let cov = c.inverse();
            (0..n).map(|i| cov[(i, i)].sqrt()).collect()
        }
        None => vec![f64::NAN; n],
    }
}

/// Asserts that `ll`'s analytic gradient at `p` matches central finite
/// differences of its value (relative 1e-6).
#[cfg(test)]
pub(crate) fn assert_gradient(ll: &dyn LogLikelihood, p: &[f64]) {
    let (_, g) = ll.value_grad(p);
    for j in 0..p.len() {
        let h = 1e-6 * p[j];
        let (mut up, mut down) = (p.to_vec(), p.to_vec());
        up[j] += h;
        down[j] -= h;
        let numeric = (ll.value_grad(&up).0 - ll.value_grad(&down).0) / (2.0 * h);
        assert!(
            (numeric - g[j]).abs() <= 1e-6 * (1.0 + g[j].abs()),
            "∂{j}: {numeric} vs {}",
            g[j]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ (counts of a Poisson with mean λ): ln L = S ln λ − N λ, maximum at
    /// λ = S / N with standard error √(λ / N).
    struct Poisson {
        n: f64,
        s: f64,
    }

    impl LogLikelihood for Poisson {
        fn value_grad(&self, p: &[f64]) -> (f64, Vec<f64>) {
            let l = p[0];
            (self.s * l.ln() - self.n * l, vec![self.s / l - self.n])
        }
        fn customers(&self) -> f64 {
            self.n
        }
        fn names(&self) -> &'static [&'static str] {
            &["lambda"]
        }
    }

    #[test]
    fn finds_a_known_maximum_and_its_standard_error() {
        let ll = Poisson {
            n: 1000.0,
            s: 2500.0,
        };
        let (p, report) = maximise(&ll, &[vec![0.1]]);
        assert!(report.converged, "{report:?}");
        assert!((p[0] - 2.5).abs() < 1e-6, "{}", p[0]);
        assert!((report.std_errors[0] - (2.5f64 / 1000.0).sqrt()).abs() < 1e-6);
        assert!(report.gradient_norm <= GRADIENT_TOLERANCE);
    }

    #[test]
    fn a_likelihood_without_maximum_is_not_converged() {
        // S = 0: the likelihood grows as λ → 0, with no maximum.
        let ll = Poisson { n: 10.0, s: 0.0 };
        let (_, report) = maximise(&ll, &[vec![1.0]]);
        assert!(!report.converged, "{report:?}");
        assert!(
            report.stop.contains("parameter lambda ran to"),
            "{report:?}"
        );
    }
}
