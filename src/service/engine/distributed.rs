//! The engine's side of distributed fits: rows from a cached partition,
//! inline bytes or a dataset, and one partition's share of a k-means step
//! or of k-means|| initialisation (see `crate::kmeans::partial`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2};

use super::partitions::{check_fit_id, PartitionRows, Reservation, Stored, MAX_TTL};
use super::{cost, Engine};
use crate::backend::{Backend, ClusterSums};
use crate::kmeans::partial;
use crate::service::convert::backend_choice;
use crate::service::error::{ServiceError, ServiceResult};
use crate::service::proto as pb;

/// Little-endian float32 bytes as floats.
pub fn f32_values(field: &str, bytes: &[u8]) -> ServiceResult<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(ServiceError::invalid(
            field,
            format!("{} bytes are not whole 4-byte floats", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect())
}

/// Checks finite values (and non-negative weights), naming the first bad one.
pub fn check_rows(field: &str, values: &[f32], width: usize) -> ServiceResult<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ServiceError::invalid(
            field,
            format!(
                "non-finite value at row {}, column {}",
                i / width,
                i % width
            ),
        ));
    }
    Ok(())
}

pub fn check_weights(field: &str, w: &[f32]) -> ServiceResult<()> {
    if let Some(i) = w.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(ServiceError::invalid(
            field,
            format!(
                "weight {} of row {i} is not a finite non-negative number",
                w[i]
            ),
        ));
    }
    Ok(())
}

/// Inline rows into a partition (validated).
fn inline_rows(r: &pb::InlineRows, max_features: usize) -> ServiceResult<PartitionRows> {
    let d = r.n_features as usize;
    if d == 0 || d > max_features {
        return Err(ServiceError::invalid(
            "rows.rows.n_features",
            format!("must be 1 to {max_features}, got {d}"),
        ));
    }
    let values = f32_values("rows.rows.values_f32le", &r.values_f32le)?;
    if values.is_empty() || !values.len().is_multiple_of(d) {
        return Err(ServiceError::invalid(
            "rows.rows.values_f32le",
            format!("{} values are not whole rows of {d}", values.len()),
        ));
    }
    check_rows("rows.rows.values_f32le", &values, d)?;
    let n = values.len() / d;
    let weights = if r.weights_f32le.is_empty() {
        None
    } else {
        let w = f32_values("rows.rows.weights_f32le", &r.weights_f32le)?;
        if w.len() != n {
            return Err(ServiceError::invalid(
                "rows.rows.weights_f32le",
                format!("{} weights for {n} rows", w.len()),
            ));
        }
        check_weights("rows.rows.weights_f32le", &w)?;
        Some(Array1::from(w))
    };
    Ok(PartitionRows {
        x: Array2::from_shape_vec((n, d), values).expect("whole rows"),
        weights,
    })
}

/// How many k-means|| candidates a step may score per `max_k`: a driver
/// oversamples 2k centres a round for a few rounds (MLlib's `initSteps`),
/// so a k well under `max_k` has several times as many candidates. The
/// work limit still bounds what they cost.
const CANDIDATES_PER_K: usize = 16;

/// Centres sent with a request: `c × d`, finite, at least one. The
/// centroids of a Lloyd step are bounded by `max_k`; candidate centres
/// (k-means||) by [`CANDIDATES_PER_K`] times that.
fn centres(field: &str, values: &[f32], d: usize, max_k: usize) -> ServiceResult<Array2<f32>> {
    if values.is_empty() || !values.len().is_multiple_of(d) {
        return Err(ServiceError::invalid(
            field,
            format!(
                "{} values are not whole rows of the partition's {d} features (at least one row)",
                values.len()
            ),
        ));
    }
    let c = values.len() / d;
    let (limit, what) = if field == "centroids" {
        (max_k, "centroids")
    } else {
        (
            max_k.saturating_mul(CANDIDATES_PER_K).saturating_add(1),
            "candidate centres (max_k × 16 + 1 for k-means||)",
        )
    };
    if c > limit {
        return Err(ServiceError::ResourceExhausted {
            limit: "max_k",
            message: format!("{c} {what}; the limit is {limit}"),
        });
    }
    check_rows(field, values, d)?;
    Ok(Array2::from_shape_vec((c, d), values.to_vec()).expect("whole rows"))
}

/// What a distributed step scores against, and how.
struct Step<'a> {
    /// The request's field holding the centres (for errors).
    field: &'static str,
    centres: &'a [f32],
    backend: i32,
}

/// Distributed steps that may wait for a slot beyond those running.
const MAX_WAITING: usize = 16;
/// Working memory of a step per row: labels, distances, second distances
/// and the assignment copied out (see `crate::kmeans::partial`).
const WORK_BYTES_PER_ROW: u64 = 24;

/// One call counted among those running or waiting; refused past `limit`.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, limit: usize) -> ServiceResult<Self> {
        let before = count.fetch_add(1, Ordering::SeqCst);
        let guard = Waiting(count);
        if before >= limit {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_concurrent_jobs",
                message: format!(
                    "{before} distributed steps are running or waiting; retry with backoff"
                ),
            });
        }
        Ok(guard)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    /// A partition key's parts, checked.
    fn partition_key(key: Option<&pb::PartitionKey>) -> ServiceResult<(&str, u32)> {
        let key = key.ok_or_else(|| ServiceError::invalid("key", "a partition key is needed"))?;
        check_fit_id(&key.fit_id)?;
        Ok((&key.fit_id, key.index))
    }

    /// Caches a partition (already read from its stream and validated).
    pub fn put_partition(
        &self,
        owner: &str,
        key: &pb::PartitionKey,
        rows: PartitionRows,
        ttl: Option<Duration>,
        reservation: Reservation<'_>,
    ) -> ServiceResult<Stored> {
        let (fit_id, index) = Self::partition_key(Some(key))?;
        self.partitions
            .put(owner, fit_id, index, rows, ttl, reservation)
    }

    /// The partition header's checks, before any rows are read.
    pub fn check_partition_header(&self, h: &pb::PartitionHeader) -> ServiceResult<()> {
        Self::partition_key(h.key.as_ref())?;
        if h.ttl_seconds as u64 > MAX_TTL.as_secs() {
            return Err(ServiceError::invalid(
                "header.ttl_seconds",
                format!("at most {} (a day)", MAX_TTL.as_secs()),
            ));
        }
        let max = self.config.limits.max_features;
        if h.n_features == 0 || h.n_features as usize > max {
            return Err(ServiceError::invalid(
                "header.n_features",
                format!("must be 1 to {max}, got {}", h.n_features),
            ));
        }
        Ok(())
    }

    pub fn release_partitions(&self, owner: &str, fit_id: &str) -> ServiceResult<usize> {
        check_fit_id(fit_id)?;
        Ok(self.partitions.release(owner, fit_id))
    }

    /// The rows a distributed step works on: the caller's cached partition
    /// or the request's own rows.
    fn source_rows(
        &self,
        owner: &str,
        source: Option<pb::RowSource>,
    ) -> ServiceResult<Arc<PartitionRows>> {
        use pb::row_source::Source;
        let source =
            source.ok_or_else(|| ServiceError::invalid("rows", "a row source is needed"))?;
        match source.source {
            Some(Source::Partition(key)) => {
                let (fit_id, index) = Self::partition_key(Some(&key))?;
                self.partitions.get(owner, fit_id, index)
            }
            Some(Source::Rows(r)) => {
                Ok(Arc::new(inline_rows(&r, self.config.limits.max_features)?))
            }
            None => Err(ServiceError::invalid("rows", "set partition or rows")),
        }
    }

    /// Runs `f` on the rows and the centres, on the chosen backend, in a
    /// scoring slot (like Assign).
    async fn on_rows<T: Send + 'static>(
        &self,
        owner: &str,
        source: Option<pb::RowSource>,
        step: Step<'_>,
        f: impl FnOnce(
                &dyn Backend,
                ArrayView2<f32>,
                Option<ArrayView1<f32>>,
                ArrayView2<f32>,
            ) -> Result<T, crate::backend::BackendError>
            + Send
            + 'static,
    ) -> ServiceResult<(T, Arc<PartitionRows>)> {
        let Step {
            field: centre_field,
            centres: centre_values,
            backend,
        } = step;
        let choice = backend_choice(backend)?;
        // These calls use every core and hold a partition's working memory,
        // so they take turns (a driver's tasks queue here); past a few
        // waiting, more are shed, so queued requests and their inline rows
        // cannot pile up.
        let slots = self.config.limits.max_concurrent_jobs.max(1);
        let _waiting = Waiting::enter(&self.distributed_waiting, slots + MAX_WAITING)?;
        let _slot = self
            .distributed
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("shutting down".into()))?;
        let rows = self.source_rows(owner, source)?;
        let (n, d) = rows.x.dim();
        if n == 0 {
            return Err(ServiceError::invalid("rows", "no rows"));
        }
        let limits = &self.config.limits;
        let c = centres(centre_field, centre_values, d, limits.max_k)?;
        // The reply holds up to k × d doubles (PartialStep's sums).
        if 8 * c.len() > limits.max_message_bytes / 2 {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_message_bytes",
                message: format!(
                    "{} centres × {d} features do not fit in one reply",
                    c.nrows()
                ),
            });
        }
        cost::assign(n, c.nrows(), d)?;
        // Labels, distances and second distances per row, held while the
        // step runs: charged to the partition cache's budget.
        let mut work = self.partitions.reserve();
        work.grow(WORK_BYTES_PER_ROW * n as u64)
            .map_err(|_| ServiceError::ResourceExhausted {
                limit: "max_partition_cache_bytes",
                message: format!(
                    "a step over {n} rows needs {} bytes of working memory, more than the \
                     partition cache has free: use smaller partitions",
                    WORK_BYTES_PER_ROW * n as u64
                ),
            })?;
        let backends = self.backends().await;
        let held = rows.clone();
        let out = tokio::task::spawn_blocking(move || {
            let (backend, _) = backends.resolve(choice)?;
            let weights = held.weights.as_ref().map(|w| w.view());
            f(backend, held.x.view(), weights, c.view())
                .map_err(|e| ServiceError::from(crate::Error::from(e)))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))??;
        Ok((out, rows))
    }

    /// The sums and the partition's row count.
    pub async fn partial_step(
        &self,
        owner: &str,
        r: pb::PartialStepRequest,
    ) -> ServiceResult<(ClusterSums, u64)> {
        let (sums, rows) = self
            .on_rows(
                owner,
                r.rows,
                Step {
                    field: "centroids",
                    centres: &r.centroids,
                    backend: r.backend,
                },
                partial::partial_step,
            )
            .await?;
        Ok((sums, rows.x.nrows() as u64))
    }

    /// (cost, rows, total weight).
    pub async fn partition_cost(
        &self,
        owner: &str,
        r: pb::PartitionCostRequest,
    ) -> ServiceResult<(f64, u64, f64)> {
        let (cost, rows) = self
            .on_rows(
                owner,
                r.rows,
                Step {
                    field: "centers",
                    centres: &r.centers,
                    backend: r.backend,
                },
                partial::cost,
            )
            .await?;
        let total_weight = rows
            .weights
            .as_ref()
            .map_or(rows.x.nrows() as f64, |w| w.iter().map(|&v| v as f64).sum());
        Ok((cost, rows.x.nrows() as u64, total_weight))
    }

    /// The sampled rows (row-major) and the width.
    pub async fn sample_by_cost(
        &self,
        owner: &str,
        r: pb::SampleByCostRequest,
    ) -> ServiceResult<Array2<f32>> {
        if !(r.oversampling.is_finite() && r.oversampling > 0.0) {
            return Err(ServiceError::invalid(
                "oversampling",
                "must be a finite number > 0",
            ));
        }
        if !(r.total_cost.is_finite() && r.total_cost > 0.0) {
            return Err(ServiceError::invalid(
                "total_cost",
                "must be a finite number > 0 (the sum of PartitionCost over every partition)",
            ));
        }
        let (l, total, seed) = (r.oversampling, r.total_cost, r.seed);
        let (chosen, rows) = self
            .on_rows(
                owner,
                r.rows,
                Step {
                    field: "centers",
                    centres: &r.centers,
                    backend: r.backend,
                },
                move |b, x, w, c| partial::sample_by_cost(b, x, w, c, l, total, seed),
            )
            .await?;
        let bytes = 4 * chosen.len() * rows.x.ncols();
        if bytes > self.config.limits.max_message_bytes / 2 {
            return Err(ServiceError::ResourceExhausted {
                limit: "max_message_bytes",
                message: format!(
                    "the sample holds {} rows ({bytes} bytes): lower oversampling or check total_cost",
                    chosen.len()
                ),
            });
        }
        Ok(rows.x.select(ndarray::Axis(0), &chosen))
    }

    pub async fn candidate_weights(
        &self,
        owner: &str,
        r: pb::CandidateWeightsRequest,
    ) -> ServiceResult<Vec<f64>> {
        let (w, _) = self
            .on_rows(
                owner,
                r.rows,
                Step {
                    field: "candidates",
                    centres: &r.candidates,
                    backend: r.backend,
                },
                partial::candidate_weights,
            )
            .await?;
        Ok(w)
    }
}
