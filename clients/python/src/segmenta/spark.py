"""k-means on a Spark DataFrame, with Segmenta servers doing the arithmetic.

Spark does the distribution; Segmenta does the kernels. Each pass over the
data is one ``mapInArrow`` job whose tasks talk to a Segmenta server (the
one at ``servers[partition % len(servers)]``: run one per worker node and
list them all):

* the first pass caches every partition's rows on its server
  (``Clustering.PutPartition``, keyed by a fit id and the partition index,
  so a retried or speculative task replaces rather than adds);
* every Lloyd iteration sends only the centroids: each task gets its
  partition's ``ClusterSums`` (``PartialStep``) and the driver adds them up;
* k-means|| initialisation (``PartitionCost``, ``SampleByCost``,
  ``CandidateWeights``, then a weighted k-means++ with a few local Lloyd
  steps on the driver) goes the same way, as in Spark MLlib and cuML;
* ``KMeansModel.transform`` runs ``Assign`` through ``mapInArrow``.

A partition that a server no longer holds (it restarted, or the partition
expired) is uploaded again from the data; a server that cannot be reached
fails the task with an error naming it, and Spark retries the task
(``spark.task.maxFailures``). The driver releases the fit's partitions when
the fit ends.

>>> from segmenta.spark import KMeans                     # doctest: +SKIP
>>> model = KMeans(k=8, inputCols=["recency", "frequency", "monetary"],
...                servers=["10.0.0.5:50051", "10.0.0.6:50051"]).fit(df)
>>> model.transform(df).groupBy("prediction").count().show()
"""
from __future__ import annotations

import json
import os
import warnings
import pathlib
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .client import Client, _backend
from .errors import NotFound, ResourceExhausted

__all__ = ["KMeans", "KMeansModel", "KMeansSummary"]

_FEATURES = "_segmenta_features"
_WEIGHT = "_segmenta_weight"
MODEL_FORMAT = "segmenta-spark-kmeans"
# 2: the model has an `offset` (version 1 files read with none).
MODEL_VERSION = 2

# One client per (server, key, TLS) in each Python worker: Spark reuses its
# workers across tasks, so channels are reused across iterations.
_CLIENTS: Dict[tuple, Client] = {}


# Seconds one call to a server may take by default: a frozen server (a
# stopped process, a network partition) fails the task, naming it, instead
# of hanging the fit.
CALL_TIMEOUT_S = 300.0


def _client_for(servers: Sequence[str], index: int, token, tls,
                timeout: float = CALL_TIMEOUT_S) -> Client:
    address = servers[index % len(servers)]
    key = (address, token, repr(tls), timeout)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = Client(address, token=token or "", tls=tls, timeout=timeout)
    return client


def _require_spark():
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as e:
        raise ImportError(f"segmenta.spark needs pyspark and pyarrow ({e}): "
                          "pip install 'segmenta[spark]'") from None


def _spark_schema(fields: Sequence[Tuple[str, str]]):
    """A Spark schema from (name, kind) pairs: int, long, bool, double,
    array<float>, array<double>."""
    from pyspark.sql import types as T

    kinds = {"int": T.IntegerType(), "long": T.LongType(), "bool": T.BooleanType(),
             "double": T.DoubleType(), "array<float>": T.ArrayType(T.FloatType()),
             "array<double>": T.ArrayType(T.DoubleType())}
    return T.StructType([T.StructField(name, kinds[kind]) for name, kind in fields])


def _arrow_schema(fields: Sequence[Tuple[str, str]]):
    """The Arrow schema of the same (name, kind) pairs."""
    import pyarrow as pa

    kinds = {"int": pa.int32(), "long": pa.int64(), "bool": pa.bool_(), "double": pa.float64(),
             "array<float>": pa.list_(pa.float32()), "array<double>": pa.list_(pa.float64())}
    return pa.schema([(name, kinds[kind]) for name, kind in fields])


def _with_backoff(call, budget_s: float = 120.0):
    """``call()``, retried with backoff while the server sheds load (its
    step queue or upload slots are full: the message says to retry)."""
    delay, waited = 0.05, 0.0
    while True:
        try:
            return call()
        except ResourceExhausted as e:
            if "retry" not in e.message or waited >= budget_s:
                raise
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)


def _server_error(servers, index, error) -> RuntimeError:
    address = servers[index % len(servers)]
    return RuntimeError(f"segmenta server {address} (partition {index}): {error}")


def _width(batch) -> int:
    """The length of a batch's first feature vector (0 when it has none)."""
    import pyarrow.compute as pc

    column = batch.column(batch.schema.get_field_index(_FEATURES))
    if len(column) == 0:
        return 0
    return int(pc.list_value_length(column)[0].as_py() or 0)


def _column_name(names: Optional[Sequence[str]], j: int) -> str:
    return repr(names[j]) if names and j < len(names) else f"#{j + 1} of the vector"


def _matrix(batches, has_weights: bool, offset: Optional[np.ndarray] = None,
            names: Optional[Sequence[str]] = None
            ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """A partition's rows from its Arrow batches: (rows × d float32, weights).

    The kernels compute in float32: the rows are read in float64 and
    ``offset`` (a point inside the data) is taken off first, so a feature
    with a large offset and a small spread (epoch seconds, say) keeps its
    precision. Nulls and non-finite values are errors naming the column
    (``names``: the input columns) and the row within the partition."""
    import pyarrow.compute as pc

    blocks, weights = [], []
    d, row0 = None, 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        column = batch.column(batch.schema.get_field_index(_FEATURES))
        if column.null_count:
            raise ValueError(f"{column.null_count} row(s) have no feature vector (null)")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = int(lengths[0])
        if d is None:
            d = width
        if (lengths != d).any():
            bad = int(np.argmax(lengths != d))
            raise ValueError(f"feature vectors of different lengths: {d} and {int(lengths[bad])}")
        flat = column.flatten()
        values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
        if flat.null_count:
            i = int(np.argmax(~flat.is_valid().to_numpy(zero_copy_only=False)))
            raise ValueError(f"a null value in column {_column_name(names, i % d)} at row "
                             f"{row0 + i // d + 1} of this partition: fill or drop it first")
        values = values.reshape(-1, d)
        if offset is not None:
            values = values - offset
        block = values.astype(np.float32)
        if not np.isfinite(block).all():
            r, j = (int(v[0]) for v in np.nonzero(~np.isfinite(block)))
            raise ValueError(f"column {_column_name(names, j)} at row {row0 + r + 1} of this "
                             f"partition is {values[r, j] + (offset[j] if offset is not None else 0)!r}: "
                             "features must be finite numbers within float32's range")
        blocks.append(block)
        row0 += block.shape[0]
        if has_weights:
            w = batch.column(batch.schema.get_field_index(_WEIGHT)).to_numpy(zero_copy_only=False)
            weights.append(np.asarray(w, dtype=np.float32))
    if not blocks:
        return None, None
    X = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    w = (np.concatenate(weights) if len(weights) > 1 else weights[0]) if has_weights else None
    return X, w


def _feature_column(df, featuresCol: str, inputCols: Optional[Sequence[str]]):
    """The features as array<float>, from numeric columns, an array or an ML vector."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, NumericType

    if inputCols:
        missing = [c for c in inputCols if c not in df.columns]
        if missing:
            raise ValueError(f"inputCols {missing} are not columns of the DataFrame ({df.columns})")
        for c in inputCols:
            if not isinstance(df.schema[c].dataType, NumericType):
                raise ValueError(f"inputCols: column {c!r} is {df.schema[c].dataType.simpleString()}, "
                                 "not numeric")
        return F.array(*[F.col(c).cast("double") for c in inputCols])
    if featuresCol not in df.columns:
        raise ValueError(f"featuresCol {featuresCol!r} is not a column of the DataFrame ({df.columns}); "
                         "pass inputCols=[...] for numeric columns")
    dtype = df.schema[featuresCol].dataType
    if isinstance(dtype, ArrayType):
        return F.col(featuresCol).cast("array<double>")
    if dtype.typeName() == "vector" or type(dtype).__name__ == "VectorUDT":
        from pyspark.ml.functions import vector_to_array
        return vector_to_array(F.col(featuresCol), dtype="float64")
    raise ValueError(f"featuresCol {featuresCol!r} is {dtype.simpleString()}: use an ML vector, an "
                     "array of numbers, or inputCols=[...]")


class KMeansSummary:
    """What the fit measured: ``trainingCost`` (inertia against the final
    centres), ``numIter``, ``converged``, ``costHistory`` (per iteration,
    against that iteration's centres), ``clusterSizes`` (weight per
    cluster), ``passes`` (Spark jobs run), and wall-clock seconds:
    ``uploadSeconds`` (caching the partitions), ``initSeconds``,
    ``iterationSeconds`` (one per Lloyd iteration)."""

    def __init__(self, trainingCost: float, numIter: int, converged: bool,
                 costHistory: List[float], clusterSizes: List[float], passes: int,
                 uploadSeconds: float = 0.0, initSeconds: float = 0.0,
                 iterationSeconds: Optional[List[float]] = None):
        self.trainingCost = trainingCost
        self.numIter = numIter
        self.converged = converged
        self.costHistory = costHistory
        self.clusterSizes = clusterSizes
        self.passes = passes
        self.uploadSeconds = uploadSeconds
        self.initSeconds = initSeconds
        self.iterationSeconds = iterationSeconds or []

    def to_dict(self):
        return dict(self.__dict__)


class KMeans:
    """k-means of a Spark DataFrame's rows on Segmenta servers.

    ``featuresCol``: an ML vector or array column; or ``inputCols``: numeric
    columns. ``weightCol``: per-row weights. ``initMode``: ``"k-means||"``,
    ``"random"``, or a ``k × d`` array of initial centres. ``tol``: converged
    when no centre moves farther than this (Euclidean, as Spark MLlib).
    ``servers``: ``host:port`` addresses (default ``$SEGMENTA_SERVER``);
    ``token``: the API key (default ``$SEGMENTA_TOKEN``), sent with the tasks.
    """

    def __init__(self, k: int = 2, featuresCol: str = "features",
                 inputCols: Optional[Sequence[str]] = None, weightCol: Optional[str] = None,
                 initMode: Union[str, np.ndarray] = "k-means||", initSteps: int = 2,
                 maxIter: int = 20, tol: float = 1e-4, seed: Optional[int] = None,
                 servers: Optional[Sequence[str]] = None, predictionCol: str = "prediction",
                 token: Optional[str] = None, tls=None, backend: Optional[str] = None,
                 partitionTtl: int = 600, timeout: float = CALL_TIMEOUT_S):
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if isinstance(initMode, str) and initMode not in ("k-means||", "random"):
            raise ValueError(f"unknown initMode {initMode!r}: use 'k-means||', 'random' or an array")
        if int(maxIter) < 1 or tol < 0 or int(initSteps) < 1:
            raise ValueError("maxIter and initSteps must be ≥ 1 and tol ≥ 0")
        self.k = int(k)
        self.featuresCol = featuresCol
        self.inputCols = list(inputCols) if inputCols else None
        self.weightCol = weightCol
        self.initMode = initMode
        self.initSteps = int(initSteps)
        self.maxIter = int(maxIter)
        self.tol = float(tol)
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        servers = list(servers) if servers else [s for s in [os.environ.get("SEGMENTA_SERVER")] if s]
        if not servers:
            raise ValueError("no Segmenta servers: pass servers=['host:port', ...] or set SEGMENTA_SERVER")
        self.servers = servers
        self.predictionCol = predictionCol
        self.token = token if token is not None else (os.environ.get("SEGMENTA_TOKEN") or None)
        self.tls = tls
        self.backend = backend
        self.partitionTtl = int(partitionTtl)
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.timeout = float(timeout)
        self._offset: Optional[np.ndarray] = None
        # Checked here, on the driver: inside a task they would surface as
        # a server's error after a Spark job.
        _backend(backend)
        for name in ("ca_cert", "client_cert", "client_key"):
            path = getattr(tls, name, None)
            if path is not None and not os.path.isfile(path):
                # The executors read it; it may exist only there.
                warnings.warn(f"tls.{name}: no such file on the driver: {path} (the executors "
                              "must have it)", stacklevel=2)

    # ------------------------------------------------------------ passes

    def _frame(self, df):
        from pyspark.sql import functions as F

        columns = [_feature_column(df, self.featuresCol, self.inputCols).alias(_FEATURES)]
        if self.weightCol:
            if self.weightCol not in df.columns:
                raise ValueError(f"weightCol {self.weightCol!r} is not a column of the DataFrame")
            columns.append(F.col(self.weightCol).cast("float").alias(_WEIGHT))
        return df.select(*columns)

    def _upload_pass(self, frame, fit_id: str) -> List[dict]:
        """Caches every partition on its server; per partition: its size,
        weight, width, and a few seeded random rows (for initialisation)."""
        from pyspark import TaskContext

        servers, token, tls, ttl = self.servers, self.token, self.tls, self.partitionTtl
        seed, has_w, timeout = self.seed, bool(self.weightCol), self.timeout
        offset, names = self._offset, self.inputCols
        # Enough random rows for random init (about 2k in all), not k from
        # every partition: the driver holds them all.
        per_partition = -(-2 * self.k // max(frame.rdd.getNumPartitions(), 1)) + 1

        def task(batches):
            import pyarrow as pa

            pid = TaskContext.get().partitionId()
            try:
                X, w = _matrix(batches, has_w, offset, names)
            except ValueError as e:
                raise ValueError(f"partition {pid}: {e}") from None
            n = 0 if X is None else X.shape[0]
            sample = np.empty((0, 0), dtype=np.float32)
            weight = 0.0
            if n:
                if w is not None and not (np.isfinite(w).all() and (w >= 0).all()):
                    raise ValueError(f"partition {pid}: weights must be finite and non-negative")
                weight = float(w.sum()) if w is not None else float(n)
                try:
                    client = _client_for(servers, pid, token, tls, timeout)
                    _with_backoff(lambda: client.put_partition(fit_id, pid, X, w, ttl))
                except Exception as e:
                    raise _server_error(servers, pid, e) from None
                rng = np.random.default_rng([seed, pid])
                sample = X[np.sort(rng.choice(n, size=min(per_partition, n), replace=False))]
            yield pa.RecordBatch.from_pydict({
                "pid": pa.array([pid], pa.int32()), "n": pa.array([n], pa.int64()),
                "d": pa.array([0 if X is None else X.shape[1]], pa.int32()),
                "weight": pa.array([weight], pa.float64()),
                "sample": pa.array([sample.reshape(-1).tolist()], pa.list_(pa.float32())),
            })

        schema = _spark_schema([("pid", "int"), ("n", "long"), ("d", "int"), ("weight", "double"),
                                ("sample", "array<float>")])
        return [r.asDict() for r in frame.mapInArrow(task, schema).collect()]

    def _partition_pass(self, spark, pids: List[int], fit_id: str, call: str, args: dict,
                        fields: Sequence[Tuple[str, str]], result) -> List[dict]:
        """One task per cached partition, calling ``call`` on its server with
        only ``args`` (centres and options; a callable gets the partition
        index) sent; ``result`` maps the reply to the row's ``fields``. A
        partition the server lost comes back as ``missing``."""
        servers, token, tls, backend = self.servers, self.token, self.tls, self.backend
        timeout = self.timeout
        fields = [("pid", "int"), ("missing", "bool"), *fields]

        def task(batches):
            import pyarrow as pa

            out_schema = _arrow_schema(fields)
            for batch in batches:
                for pid in batch.column(0).to_pylist():
                    client = _client_for(servers, pid, token, tls, timeout)
                    kwargs = {name: (value(pid) if callable(value) else value)
                              for name, value in args.items()}
                    try:
                        reply = _with_backoff(lambda: getattr(client, call)(
                            partition=(fit_id, pid), backend=backend, **kwargs))
                    except NotFound:
                        row = {"pid": pid, "missing": True}
                    except Exception as e:
                        raise _server_error(servers, pid, e) from None
                    else:
                        row = {"pid": pid, "missing": False, **result(reply)}
                    yield pa.RecordBatch.from_pylist([row], schema=out_schema)

        rdd = spark.sparkContext.parallelize([(p,) for p in pids], max(1, len(pids)))
        index = spark.createDataFrame(rdd, _spark_schema([("pid", "int")]))
        return [r.asDict() for r in index.mapInArrow(task, _spark_schema(fields)).collect()]

    def _each_partition(self, df, frame, state, call, args, fields, result):
        """A partition pass; partitions a server lost are uploaded again (once
        per pass, then it is an error)."""
        rows = self._partition_pass(df.sparkSession, state["pids"], state["fit_id"], call, args,
                                    fields, result)
        state["passes"] += 1
        if any(r["missing"] for r in rows):
            self._upload_pass(frame, state["fit_id"])
            state["passes"] += 1
            rows = self._partition_pass(df.sparkSession, state["pids"], state["fit_id"], call, args,
                                        fields, result)
            state["passes"] += 1
            lost = [r["pid"] for r in rows if r["missing"]]
            if lost:
                raise RuntimeError(f"partitions {lost} were lost again right after being uploaded: "
                                   "did their server restart again, or is its "
                                   "max_partition_cache_bytes too small?")
        return sorted(rows, key=lambda r: r["pid"])

    # ------------------------------------------------------------ init

    def _initial_centers(self, df, frame, state, parts: List[dict]) -> np.ndarray:
        d = state["d"]
        rng = np.random.default_rng(self.seed)
        pool = [(np.asarray(p["sample"], dtype=np.float32).reshape(-1, d), p["weight"], p["n"])
                for p in parts]
        if not isinstance(self.initMode, str):
            centers = np.asarray(self.initMode, dtype=np.float64)
            if centers.shape != (self.k, d):
                raise ValueError(f"initMode has shape {centers.shape}; expected (k, d) = ({self.k}, {d})")
            return (centers - self._offset).astype(np.float32)
        rows = np.concatenate([s for s, _, _ in pool])
        # Each partition sent a few of its rows at random: weigh them by the
        # share of the data they stand for, so any row is as likely.
        per_row = np.concatenate([np.full(len(s), w / max(len(s), 1)) for s, w, _ in pool])
        if self.initMode == "random" or self.k == 1:
            picks = rng.choice(len(rows), size=self.k, replace=len(rows) < self.k, p=per_row / per_row.sum())
            return rows[picks]
        # k-means||: a first centre at random, then initSteps rounds.
        centers = rows[[rng.choice(len(rows), p=per_row / per_row.sum())]]
        oversampling = 2.0 * self.k
        for step in range(self.initSteps):
            costs = self._each_partition(df, frame, state, "partition_cost", {"centers": centers},
                                         [("cost", "double")], lambda r: {"cost": r[0]})
            total = sum(r["cost"] for r in costs)
            if total <= 0:
                break
            seed = self.seed
            samples = self._each_partition(
                df, frame, state, "sample_by_cost",
                {"centers": centers, "oversampling": oversampling, "total_cost": total,
                 "seed": lambda pid, s=step: (seed * 1_000_003 + s * 7919 + pid) & 0xFFFFFFFFFFFFFFFF},
                [("sample", "array<float>")], lambda r: {"sample": r.reshape(-1).tolist()})
            new = [np.asarray(r["sample"], dtype=np.float32).reshape(-1, d) for r in samples]
            centers = np.concatenate([centers, *new])
        centers = np.unique(centers, axis=0)
        if len(centers) < self.k:
            extra = rows[rng.choice(len(rows), size=self.k, replace=len(rows) < self.k)]
            centers = np.unique(np.concatenate([centers, extra]), axis=0)
            if len(centers) < self.k:
                raise ValueError(f"the data has only {len(centers)} distinct rows for k = {self.k}")
        weights = self._sum_weights(df, frame, state, centers)
        return _local_kmeans(centers, weights, self.k, rng)

    def _sum_weights(self, df, frame, state, centers) -> np.ndarray:
        rows = self._each_partition(df, frame, state, "candidate_weights", {"candidates": centers},
                                    [("weights", "array<double>")], lambda r: {"weights": r.tolist()})
        return np.sum([np.asarray(r["weights"]) for r in rows], axis=0)

    # ------------------------------------------------------------ fit

    def _offset_of(self, frame) -> Optional[np.ndarray]:
        """A point inside the data (the mean of a few of its rows, in
        float64): the rows are sent less it (see :func:`_matrix`)."""
        rows = [r[_FEATURES] for r in frame.select(_FEATURES).limit(256).collect()
                if r[_FEATURES] is not None]
        widths = {len(r) for r in rows}
        if len(widths) != 1:
            return None  # no rows, or ragged ones: the upload pass says which
        values = np.asarray([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)
        values[~np.isfinite(values)] = np.nan
        with np.errstate(all="ignore"):
            offset = np.nanmean(values, axis=0) if len(values) else None
        return None if offset is None else np.nan_to_num(offset, nan=0.0)

    def fit(self, df) -> "KMeansModel":
        """Fits on the DataFrame's rows; returns a :class:`KMeansModel`."""
        _require_spark()
        frame = self._frame(df)
        self._offset = self._offset_of(frame)
        fit_id = f"spark-{uuid.uuid4().hex}"
        state = {"fit_id": fit_id, "passes": 1}
        started = time.perf_counter()
        try:
            parts = self._upload_pass(frame, fit_id)
            uploaded = time.perf_counter()
            full = [p for p in parts if p["n"] > 0]
            if not full:
                raise ValueError("the DataFrame has no rows")
            widths = {p["d"] for p in full}
            if len(widths) != 1:
                raise ValueError(f"feature vectors of different lengths across partitions: {sorted(widths)}")
            state["d"] = d = widths.pop()
            if self._offset is None or len(self._offset) != d:
                self._offset = np.zeros(d)
            state["pids"] = sorted(p["pid"] for p in full)
            n_rows = sum(p["n"] for p in full)
            if n_rows < self.k:
                raise ValueError(f"k = {self.k} is larger than the number of rows ({n_rows})")
            centers = self._initial_centers(df, frame, state, full).astype(np.float32)
            initialised = time.perf_counter()
            history, converged, iteration, seconds = [], False, 0, []
            for iteration in range(1, self.maxIter + 1):
                tick = time.perf_counter()
                rows = self._each_partition(
                    df, frame, state, "partial_step", {"centroids": centers},
                    [("sums", "array<double>"), ("weights", "array<double>"), ("inertia", "double")],
                    lambda r: {"sums": r.sums.reshape(-1).tolist(), "weights": r.weights.tolist(),
                               "inertia": r.inertia})
                sums = np.sum([np.asarray(r["sums"]).reshape(self.k, d) for r in rows], axis=0)
                weights = np.sum([np.asarray(r["weights"]) for r in rows], axis=0)
                history.append(float(sum(r["inertia"] for r in rows)))
                new = centers.astype(np.float64)
                alive = weights > 0
                new[alive] = sums[alive] / weights[alive, None]
                # Between the centres as used (float32): an unchanged
                # assignment gives the same ones, so tol = 0 converges.
                new = new.astype(np.float32)
                moved = np.sqrt(((new.astype(np.float64) - centers) ** 2).sum(axis=1)).max()
                centers = new
                seconds.append(time.perf_counter() - tick)
                if moved <= self.tol:
                    converged = True
                    break
            costs = self._each_partition(df, frame, state, "partition_cost", {"centers": centers},
                                         [("cost", "double")], lambda r: {"cost": r[0]})
            sizes = self._sum_weights(df, frame, state, centers)
            summary = KMeansSummary(float(sum(r["cost"] for r in costs)), iteration, converged,
                                    history, sizes.tolist(), state["passes"],
                                    uploadSeconds=uploaded - started,
                                    initSeconds=initialised - uploaded, iterationSeconds=seconds)
        finally:
            self._release(fit_id)
        return KMeansModel(centers, featuresCol=self.featuresCol, inputCols=self.inputCols,
                           predictionCol=self.predictionCol, servers=self.servers, token=self.token,
                           tls=self.tls, summary=summary, offset=self._offset,
                           timeout=self.timeout)

    def _release(self, fit_id: str):
        for i in range(len(self.servers)):
            try:
                _client_for(self.servers, i, self.token, self.tls,
                            self.timeout).release_partitions(fit_id)
            except Exception:  # a server that is down has lost them anyway; they expire
                pass


def _local_kmeans(points: np.ndarray, weights: np.ndarray, k: int, rng, iterations: int = 30):
    """Weighted k-means++ on the candidates, then weighted Lloyd steps (as
    Spark MLlib's LocalKMeans): k initial centres from the k-means|| candidates."""
    points = points.astype(np.float64)
    weights = np.maximum(weights.astype(np.float64), 0)
    if weights.sum() <= 0:
        weights = np.ones(len(points))
    centers = [points[rng.choice(len(points), p=weights / weights.sum())]]
    closest = ((points - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = weights * closest
        i = rng.choice(len(points), p=p / p.sum()) if p.sum() > 0 else int(rng.integers(len(points)))
        centers.append(points[i])
        closest = np.minimum(closest, ((points - points[i]) ** 2).sum(1))
    centers = np.array(centers)
    for _ in range(iterations):
        labels = _nearest(points, centers)
        new = centers.copy()
        for c in range(k):
            mask = labels == c
            if weights[mask].sum() > 0:
                new[c] = (points[mask] * weights[mask, None]).sum(0) / weights[mask].sum()
        if np.allclose(new, centers):
            break
        centers = new
    return centers.astype(np.float32)


def _local_path(path) -> pathlib.Path:
    """A local directory: a URI (hdfs://, s3a://) is refused, not taken for
    a local folder named after its scheme."""
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(f"{text}: save and load take a local path (copy the directory to "
                         "distributed storage yourself)")
    return pathlib.Path(text)


def _nearest(points: np.ndarray, centers: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The nearest centre of each point, by ‖p‖² − 2p·c + ‖c‖² in chunks
    (never a points × centres × features array)."""
    c2 = (centers ** 2).sum(1)
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), chunk):
        p = points[start:start + chunk]
        out[start:start + chunk] = (c2[None, :] - 2 * p @ centers.T).argmin(1)
    return out


class KMeansModel:
    """A fitted model: ``clusterCenters()`` as Spark MLlib's, ``transform``
    adding the prediction column, ``save``/``load``."""

    def __init__(self, centers: np.ndarray, featuresCol: str = "features",
                 inputCols: Optional[Sequence[str]] = None, predictionCol: str = "prediction",
                 servers: Optional[Sequence[str]] = None, token: Optional[str] = None, tls=None,
                 summary: Optional[KMeansSummary] = None, offset: Optional[np.ndarray] = None,
                 timeout: float = CALL_TIMEOUT_S):
        # The centres less `offset` (float32), as the servers hold them and
        # rows are sent: `centers` and clusterCenters() add it back.
        self._shifted = np.asarray(centers, dtype=np.float32)
        self.offset = (np.zeros(self._shifted.shape[1]) if offset is None
                       else np.asarray(offset, dtype=np.float64))
        self.featuresCol = featuresCol
        self.inputCols = list(inputCols) if inputCols else None
        self.predictionCol = predictionCol
        self.servers = list(servers) if servers else [s for s in [os.environ.get("SEGMENTA_SERVER")] if s]
        self.token = token if token is not None else (os.environ.get("SEGMENTA_TOKEN") or None)
        self.tls = tls
        self.summary = summary
        self.timeout = float(timeout)
        self._model_ids: Dict[str, str] = {}

    @property
    def centers(self) -> np.ndarray:
        """The centres in the data's units (k × d, float64)."""
        return self._shifted.astype(np.float64) + self.offset

    def clusterCenters(self) -> List[np.ndarray]:
        return list(self.centers)

    @property
    def hasSummary(self) -> bool:
        return self.summary is not None

    def _register(self) -> Dict[str, str]:
        """The model on every server (Models.CreateKMeans), once."""
        if not self.servers:
            raise ValueError("no Segmenta servers: set model.servers or SEGMENTA_SERVER")
        s = self.summary
        for i, address in enumerate(self.servers):
            if address not in self._model_ids:
                client = _client_for(self.servers, i, self.token, self.tls, self.timeout)
                try:
                    # In the offset units the rows are sent in (see _matrix):
                    # use it through this object, not by its id alone.
                    self._model_ids[address] = client.create_kmeans(
                        self._shifted, inertia=s.trainingCost if s else 0.0,
                        n_iter=s.numIter if s else 0, converged=s.converged if s else False,
                        inertia_history=s.costHistory if s else ()).id
                except Exception as e:
                    raise RuntimeError(f"segmenta server {address}: {e}") from None
        return dict(self._model_ids)

    def unregister(self) -> List[str]:
        """Deletes the models ``transform`` registered on the servers (needs
        an admin key); returns their ids."""
        deleted = []
        for i, address in enumerate(self.servers):
            model_id = self._model_ids.pop(address, None)
            if model_id:
                deleted += _client_for(self.servers, i, self.token, self.tls,
                                       self.timeout).delete_model(model_id)
        return deleted

    def transform(self, df):
        """The DataFrame with ``predictionCol`` (int): each row's nearest
        centre, from ``Assign`` on the servers, through ``mapInArrow``. The
        first call registers the centroids on each server
        (``Models.CreateKMeans``, a write key) once per model object;
        :meth:`unregister` removes them."""
        from pyspark import TaskContext
        from pyspark.sql.types import IntegerType, StructField, StructType

        _require_spark()
        if self.predictionCol in df.columns:
            raise ValueError(f"the DataFrame already has a column {self.predictionCol!r}")
        model_ids = self._register()
        servers, token, tls, timeout = self.servers, self.token, self.tls, self.timeout
        d = self._shifted.shape[1]
        offset, names = self.offset, self.inputCols
        schema = StructType(df.schema.fields + [StructField(self.predictionCol, IntegerType())])
        prediction = self.predictionCol
        with_features = df.withColumn(_FEATURES, _feature_column(df, self.featuresCol, self.inputCols))

        def task(batches):
            import pyarrow as pa

            pid = TaskContext.get().partitionId()
            client = _client_for(servers, pid, token, tls, timeout)
            model_id = model_ids[servers[pid % len(servers)]]
            for batch in batches:
                where = batch.schema.get_field_index(_FEATURES)
                if batch.num_rows:
                    width = _width(batch)
                    if width != d:
                        raise ValueError(f"rows have {width} features; the model has {d}")
                    X, _ = _matrix([batch], False, offset, names)
                    try:
                        labels = client.assign(model_id, X).labels.astype(np.int32)
                    except Exception as e:
                        raise _server_error(servers, pid, e) from None
                else:
                    labels = np.empty(0, dtype=np.int32)
                batch = batch.remove_column(where)
                yield batch.append_column(prediction, pa.array(labels, pa.int32()))

        return with_features.mapInArrow(task, schema)

    def predict(self, features) -> int:
        """The nearest centre of one feature vector (on the driver)."""
        x = np.asarray(features, dtype=np.float64).reshape(-1)
        if x.shape[0] != self._shifted.shape[1]:
            raise ValueError(f"{x.shape[0]} features; the model has {self._shifted.shape[1]}")
        return int(((self._shifted.astype(np.float64) - (x - self.offset)) ** 2).sum(1).argmin())

    def save(self, path: Union[str, os.PathLike]):
        """Writes the model to a directory (a local path): centres and
        settings as JSON. No server address or key is written."""
        out = _local_path(path)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "k": len(self._shifted),
               "centers": self._shifted.tolist(), "offset": self.offset.tolist(),
               "featuresCol": self.featuresCol,
               "inputCols": self.inputCols, "predictionCol": self.predictionCol,
               "summary": self.summary.to_dict() if self.summary else None}
        tmp = out / "model.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, out / "model.json")

    @classmethod
    def load(cls, path: Union[str, os.PathLike], servers: Optional[Sequence[str]] = None,
             token: Optional[str] = None, tls=None) -> "KMeansModel":
        file = _local_path(path) / "model.json"
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read a Segmenta Spark model from {file}: {e}") from None
        if doc.get("format") != MODEL_FORMAT:
            raise ValueError(f"{file} is not a Segmenta Spark model")
        if doc.get("version", 0) > MODEL_VERSION:
            raise ValueError(f"{file} is version {doc['version']}; this package reads up to {MODEL_VERSION}")
        summary = KMeansSummary(**doc["summary"]) if doc.get("summary") else None
        return cls(np.asarray(doc["centers"], dtype=np.float32), featuresCol=doc["featuresCol"],
                   inputCols=doc["inputCols"], predictionCol=doc["predictionCol"], servers=servers,
                   token=token, tls=tls, summary=summary, offset=doc.get("offset"))
