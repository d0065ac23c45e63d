//! What a request would cost, checked against the limits before it runs:
//! memory that grows with the request's shape, and work that grows with
//! its product. A refusal names the limit, so an operator knows which knob
//! to turn and a client knows what to shrink.

use crate::kmeans::KMeansParams;
use crate::service::config::Limits;
use crate::service::error::{ServiceError, ServiceResult};

const GIB: f64 = (1u64 << 30) as f64;
/// Memory one k-means step may hold in per-block partial sums.
const MAX_STEP_BYTES: f64 = GIB;
/// Distance evaluations (rows × k × features) one Assign call may cost:
/// about a second of one core.
pub const MAX_ASSIGN_WORK: f64 = 1e10;

fn exhausted(limit: &'static str, message: String) -> ServiceError {
    ServiceError::ResourceExhausted { limit, message }
}

fn features(limits: &Limits, d: usize) -> ServiceResult<()> {
    if d > limits.max_features {
        return Err(exhausted(
            "max_features",
            format!("{d} features; the limit is {}", limits.max_features),
        ));
    }
    Ok(())
}

/// A model must fit in one response message (centroids in two copies:
/// original and scaled units).
pub fn model_fits_message(limits: &Limits, values: usize) -> ServiceResult<()> {
    let bytes = 8 * values as u64;
    if bytes > limits.max_message_bytes as u64 / 2 {
        return Err(exhausted(
            "max_message_bytes",
            format!(
                "the model would hold {values} values ({bytes} bytes), more than half the message limit of {} bytes",
                limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

/// A scoring reply of `rows` rows, `bytes_per_row` each, must fit in one
/// response message: refused before any work, with the rows that would.
pub fn reply_fits_message(limits: &Limits, rows: usize, bytes_per_row: usize) -> ServiceResult<()> {
    // Headroom for field tags and lengths.
    let budget = limits.max_message_bytes.saturating_sub(1024);
    let bytes = rows as u64 * bytes_per_row as u64;
    if bytes > budget as u64 {
        return Err(exhausted(
            "max_message_bytes",
            format!(
                "the reply to {rows} rows would take {bytes} bytes, more than the message limit \
                 of {} bytes: send at most {} rows per request",
                limits.max_message_bytes,
                budget / bytes_per_row.max(1)
            ),
        ));
    }
    Ok(())
}

pub fn kmeans(limits: &Limits, params: &KMeansParams, n_rows: u64, d: usize) -> ServiceResult<()> {
    let k = params.k();
    features(limits, d)?;
    if k > limits.max_k {
        return Err(exhausted(
            "max_k",
            format!("k = {k}; the limit is {}", limits.max_k),
        ));
    }
    let iterations = params
        .n_init_value()
        .saturating_mul(params.max_iter_value());
    if iterations > limits.max_iterations {
        return Err(exhausted(
            "max_iterations",
            format!(
                "n_init × max_iter = {iterations}; the limit is {}",
                limits.max_iterations
            ),
        ));
    }
    model_fits_message(limits, k.saturating_mul(d))?;
    // The CPU keeps one k × (d + 1) f64 partial per block of rows (up to
    // 256 blocks of at least 4,096 rows) until a step's sums are added.
    let blocks = (n_rows / 4096).clamp(1, 256) as f64;
    let partials = blocks * k as f64 * (d + 1) as f64 * 8.0;
    if partials > MAX_STEP_BYTES {
        return Err(exhausted(
            "max_k",
            format!(
                "k = {k} on {n_rows} rows × {d} features needs {:.1} GiB of partial sums per step; at most {:.0} GiB (lower k)",
                partials / GIB,
                MAX_STEP_BYTES / GIB
            ),
        ));
    }
    let work = n_rows as f64 * k as f64 * d as f64 * iterations as f64;
    if work > limits.max_fit_work {
        return Err(exhausted(
            "max_fit_work",
            format!(
                "rows × k × features × n_init × max_iter = {work:.3e}; the limit is {:.3e} (lower max_iter or n_init, or k)",
                limits.max_fit_work
            ),
        ));
    }
    Ok(())
}

/// PCA keeps a `d × d` Gram per block of rows (16 of them) in f64, then
/// decomposes it in `O(d³)`; `d` is bounded by `max_features`, the pass
/// over the rows by the work budget.
pub fn pca(limits: &Limits, n_rows: u64, d: usize, n_components: usize) -> ServiceResult<()> {
    features(limits, d)?;
    // Components, mean and spectra must fit in one response.
    model_fits_message(limits, n_components.saturating_mul(d) / 2 + d)?;
    let work = n_rows as f64 * d as f64 * d as f64 / 2.0 + (d as f64).powi(3);
    if work > limits.max_fit_work {
        return Err(exhausted(
            "max_fit_work",
            format!(
                "rows × features² / 2 + features³ = {work:.3e}; the limit is {:.3e}",
                limits.max_fit_work
            ),
        ));
    }
    Ok(())
}

/// Scoring rows against a model: `rows × k × d` distances.
pub fn assign(rows: usize, k: usize, d: usize) -> ServiceResult<()> {
    let work = rows as f64 * k as f64 * d as f64;
    if work > MAX_ASSIGN_WORK {
        return Err(exhausted(
            "max_assign_rows",
            format!(
                "{rows} rows × k = {k} × {d} features = {work:.2e} distances in one call; at most {MAX_ASSIGN_WORK:.0e}: send fewer rows per call"
            ),
        ));
    }
    Ok(())
}

/// A segment job clusters each customer (at most one per log line) for
/// every k of its sweep, `n_init` times, up to 300 iterations each, on 5
/// features.
pub fn segment(
    limits: &Limits,
    max_lines: u64,
    ks: std::ops::RangeInclusive<usize>,
    n_init: usize,
) -> ServiceResult<()> {
    let sum_k: f64 = ks.map(|k| k as f64).sum();
    // A sweep also fits each k on 3 bootstrap samples of up to 5,000
    // customers (its stability): as many row-fits as 3 × min(n, 5,000).
    let rows = max_lines as f64 * n_init as f64 + 3.0 * (max_lines as f64).min(5000.0);
    let work = rows * sum_k * 300.0 * 5.0;
    if work > limits.max_fit_work {
        return Err(exhausted(
            "max_fit_work",
            format!(
                "up to {max_lines} customers × n_init {n_init} (plus 3 bootstrap fits) × Σk = {sum_k} × 300 iterations × 5 features = {work:.3e}; the limit is {:.3e} (narrow the k range or lower n_init)",
                limits.max_fit_work
            ),
        ));
    }
    Ok(())
}

/// Evaluate assigns every row (`n·k·d`), compares clusters pairwise
/// (`k²·d`) and the silhouette sample pairwise (`s²·d`).
pub fn evaluate(
    limits: &Limits,
    n_rows: u64,
    k: usize,
    d: usize,
    sample: usize,
) -> ServiceResult<()> {
    if sample > limits.max_silhouette_sample {
        return Err(exhausted(
            "max_silhouette_sample",
            format!(
                "a silhouette sample of {sample} rows; the limit is {} (its cost grows with the square)",
                limits.max_silhouette_sample
            ),
        ));
    }
    let s = (sample as u64).min(n_rows) as f64;
    let work = (n_rows as f64 * k as f64 + (k as f64).powi(2) + s * s) * d as f64;
    if work > limits.max_fit_work {
        return Err(exhausted(
            "max_fit_work",
            format!(
                "(rows × k + k² + sample²) × features = {work:.3e}; the limit is {:.3e}",
                limits.max_fit_work
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_named_when_passed() {
        let l = Limits::default();
        let refuse = |r: ServiceResult<()>, limit: &str| match r {
            Err(ServiceError::ResourceExhausted { limit: got, .. }) => assert_eq!(got, limit),
            other => panic!("expected {limit}, got {other:?}"),
        };
        refuse(
            kmeans(&l, &KMeansParams::new(200_000), 1_000_000, 2),
            "max_k",
        );
        refuse(
            kmeans(&l, &KMeansParams::new(8).n_init(100).max_iter(1000), 10, 2),
            "max_iterations",
        );
        refuse(kmeans(&l, &KMeansParams::new(8), 10, 5000), "max_features");
        refuse(
            kmeans(&l, &KMeansParams::new(100_000), 1_000_000, 32),
            "max_message_bytes",
        );
        refuse(
            kmeans(&l, &KMeansParams::new(1_000), 1_000_000_000, 64),
            "max_fit_work",
        );
        refuse(pca(&l, 2, 2_000_000, 1), "max_features");
        refuse(pca(&l, 1 << 40, 4096, 1), "max_fit_work");
        refuse(pca(&l, 1000, 2100, 2100), "max_message_bytes");
        refuse(
            kmeans(&l, &KMeansParams::new(100_000).max_iter(1), 1_000_000, 10),
            "max_k",
        );
        refuse(assign(1_000_000, 100_000, 10), "max_assign_rows");
        refuse(segment(&l, 100_000, 29_937..=30_000, 100), "max_fit_work");
        assert!(segment(&l, 10_000_000, 2..=10, 3).is_ok());
        assert!(assign(1000, 64, 32).is_ok());
        refuse(evaluate(&l, 10, 2, 2, 1_000_000), "max_silhouette_sample");
        assert!(kmeans(&l, &KMeansParams::new(64), 1_000_000, 32).is_ok());
        assert!(kmeans(&l, &KMeansParams::new(100_000), 1_000_000, 2).is_ok());
        assert!(pca(&l, 1_000_000, 128, 16).is_ok());
        assert!(evaluate(&l, 1_000_000, 64, 32, 10_000).is_ok());
    }
}
