"""``segmenta.Client``: the server's whole gRPC API in Python terms.

Matrices go in as numpy arrays, pandas DataFrames or pyarrow Tables and come
back as numpy arrays; metadata comes back as the API's messages
(:mod:`segmenta.v1.segmenta_pb2`); long work (imports, fits, segment jobs)
waits for its job unless ``wait=False``; every failure is a
:class:`segmenta.SegmentaError` with the status code and the server's message.
"""
from __future__ import annotations

import os
import pathlib
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import grpc
import numpy as np

from . import _arrays
from ._channel import Tls, connect, speaks_tls
from .errors import JobFailed, SegmentaError, from_rpc_error, in_python
from .v1 import segmenta_pb2 as pb
from .v1 import segmenta_pb2_grpc as rpc

__all__ = ["Client", "Assignment", "PartialSums", "Tls"]

_BACKENDS = {None: pb.BACKEND_UNSPECIFIED, "auto": pb.BACKEND_AUTO,
             "gpu": pb.BACKEND_GPU, "cpu": pb.BACKEND_CPU}
_INITS = {"k-means++": pb.INIT_METHOD_KMEANS_PLUS_PLUS, "k-means||": pb.INIT_METHOD_KMEANS_PARALLEL,
          "random": pb.INIT_METHOD_RANDOM}
_FORMATS = {".csv": pb.FILE_FORMAT_CSV, ".tsv": pb.FILE_FORMAT_CSV, ".txt": pb.FILE_FORMAT_CSV,
            ".parquet": pb.FILE_FORMAT_PARQUET}
_DONE = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


class PartialSums(NamedTuple):
    """One partition's share of a Lloyd step: add these up over partitions,
    then ``sums / weights[:, None]`` are the new centroids."""

    sums: np.ndarray      # k × d, float64
    weights: np.ndarray   # k, float64
    inertia: float
    n_rows: int


class Assignment(NamedTuple):
    """Per row: the nearest centroid, its squared distance (scaled units when
    the model standardizes) and the margin to the second nearest; for a
    segment model (a segmentation ``seg-…``, or an imported ``model.json``),
    ``segments`` holds each row's stable segment id (else ``None``)."""

    labels: np.ndarray
    distances: np.ndarray
    margins: np.ndarray
    segments: Optional[np.ndarray] = None


def _assignment(responses) -> Assignment:
    """One :class:`Assignment` from the answers to one or more requests."""
    def joined(field, dtype):
        parts = [np.asarray(getattr(r, field), dtype=dtype) for r in responses]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    labels = joined("labels", np.int64)
    segments = joined("segments", np.int64)
    return Assignment(labels, joined("distances", np.float32), joined("margins", np.float32),
                      segments if len(segments) == len(labels) and len(labels) else None)


def _backend(name: Optional[str]) -> int:
    try:
        return _BACKENDS[name if name is None else name.lower()]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}: use 'auto', 'gpu' or 'cpu'") from None


def _text_format(delimiter=None, decimal_comma=False, date_format=None) -> pb.TextFormat:
    if delimiter is not None and delimiter not in (",", ";", "\t", "tab", "|"):
        raise ValueError(f"unknown delimiter {delimiter!r}: use ',', ';', '\\t' or '|'")
    return pb.TextFormat(delimiter="tab" if delimiter == "\t" else (delimiter or ""),
                         decimal_comma=bool(decimal_comma), date_format=date_format or "")


_TIME_UNITS = {"day": pb.TIME_UNIT_DAY, "week": pb.TIME_UNIT_WEEK, "month": pb.TIME_UNIT_MONTH}
_ROLES = ("customer", "date", "amount", "quantity", "order")


_TRUE = {1, True, "1", "true", "True", "TRUE"}
_FALSE = {0, False, "0", "false", "False", "FALSE"}


def _converted(value, row: int) -> bool:
    """0/1 or true/false, strictly: a NaN or ``"no"`` is an error, never a
    conversion."""
    try:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    except TypeError:
        pass
    raise ValueError(f"converted, row {row + 1}: expected 0/1 or true/false, got {value!r}")


def _check_source(transactions_id: str, transactions_path: str) -> None:
    if bool(transactions_id) == bool(transactions_path):
        raise ValueError("give one of transactions_id and transactions_path")


def _columns(columns: Optional[Dict[str, str]]) -> pb.TransactionColumns:
    columns = dict(columns or {})
    unknown = set(columns) - set(_ROLES)
    if unknown:
        raise ValueError(f"unknown column role(s) {sorted(unknown)}: use {', '.join(_ROLES)}")
    return pb.TransactionColumns(**columns)


def _check_holdout_share(share) -> None:
    """A holdout share is strictly between 0 and 1. Checked here because
    the wire form cannot tell 0 from "no experiment": the server would
    quietly run the job without campaign groups."""
    share = float(share)
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout_share must be strictly between 0 and 1, got {share}")


def _value_options(time_unit: str, horizon: int, discount_rate: float,
                   churn_thresholds: Optional[Sequence[float]]) -> pb.ValueOptions:
    unit = _TIME_UNITS.get(str(time_unit).lower())
    if unit is None:
        raise ValueError(f"unknown time unit {time_unit!r}: use day, week or month")
    high, medium = (0.0, 0.0) if churn_thresholds is None else churn_thresholds
    return pb.ValueOptions(time_unit=unit, horizon=int(horizon), discount_rate=float(discount_rate),
                           churn_high=float(high), churn_medium=float(medium))


class _Progress:
    """A tqdm bar when asked for (``progress=True``); nothing otherwise."""

    def __init__(self, enabled: bool, total: float, desc: str, unit: str = "it"):
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("progress=True needs tqdm: pip install 'segmenta[progress]'") from None
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True)

    def to(self, value: float, postfix: Optional[str] = None):
        if self._bar is not None:
            self._bar.update(max(0.0, value - self._bar.n))
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)

    def close(self):
        if self._bar is not None:
            self._bar.close()


class Client:
    """A connection to one Segmenta server.

    ``address`` defaults to ``$SEGMENTA_SERVER``; ``token`` (the API key) to
    ``$SEGMENTA_TOKEN``. ``tls``: ``None`` for plaintext (loopback),
    ``True`` for TLS with the system's CAs, or :class:`segmenta.Tls` for a
    private CA and mutual TLS. ``timeout``: seconds per call (``None``: no
    limit; waiting for a job is not one call).

    >>> with segmenta.Client("127.0.0.1:50051") as client:   # doctest: +SKIP
    ...     model = client.fit_kmeans(client.upload(X).id, k=8)
    """

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None,
                 tls: Union[None, bool, Tls] = None, timeout: Optional[float] = None,
                 options: Sequence = ()):
        address = address or os.environ.get("SEGMENTA_SERVER")
        if not address:
            raise ValueError("no server address: pass Client(address) or set SEGMENTA_SERVER")
        # A URL as the command-line client takes it: http:// is plaintext,
        # https:// TLS (with the system's CAs unless tls= says otherwise).
        if address.startswith("http://"):
            address = address[len("http://"):].rstrip("/")
        elif address.startswith("https://"):
            address = address[len("https://"):].rstrip("/")
            tls = True if tls is None else tls
        token = token if token is not None else (os.environ.get("SEGMENTA_TOKEN") or None)
        self._connect(address, token, tls, timeout, tuple(options))

    def _connect(self, address, token, tls, timeout, options):
        self.address = address
        self.timeout = timeout
        # What a pickled client needs to connect again the same way (a
        # scikit-learn estimator sent to a joblib worker carries its client).
        self._spec = (address, token, tls, timeout, options)
        self._channel = connect(address, token=token, tls=tls, options=options)
        self._datasets = rpc.DatasetsStub(self._channel)
        self._jobs = rpc.JobsStub(self._channel)
        self._clustering = rpc.ClusteringStub(self._channel)
        self._decomposition = rpc.DecompositionStub(self._channel)
        self._segmentations = rpc.SegmentationsStub(self._channel)
        self._models = rpc.ModelsStub(self._channel)
        self._server = rpc.ServerStub(self._channel)
        self._privacy = rpc.PrivacyStub(self._channel)
        self._limits: Optional[pb.Limits] = None

    # ------------------------------------------------------------ plumbing

    def close(self):
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"segmenta.Client({self.address!r})"

    def __getstate__(self):
        return {"spec": self._spec}

    def __setstate__(self, state):
        self._connect(*state["spec"])

    # A connection is shared, not copied (scikit-learn's clone deep-copies
    # an estimator's parameters, and a channel cannot be copied).
    def __copy__(self) -> "Client":
        return self

    def __deepcopy__(self, memo) -> "Client":
        return self

    def _error(self, e: grpc.RpcError):
        """The package's exception, with a hint where a plaintext client
        met a TLS port (the port's own answer tells, see ``speaks_tls``)."""
        error = from_rpc_error(e)
        plaintext = self._spec[2] in (None, False)
        if plaintext and error.code == grpc.StatusCode.UNAVAILABLE and speaks_tls(self.address):
            error.message += (" (the server speaks TLS and this client did not: "
                              "pass tls=segmenta.Tls(ca_cert=...))")
            error.args = (f"{error.code.name}: {error.message}",)
        return error

    def _call(self, method, request, timeout=None):
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _stream(self, method, request) -> Iterator:
        try:
            yield from method(request, timeout=None)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _pages(self, method, request_type, field: str, page_size: int = 0) -> Iterator:
        token = ""
        while True:
            page = self._call(method, request_type(page_size=page_size, page_token=token))
            yield from getattr(page, field)
            token = page.next_page_token
            if not token:
                return

    @property
    def limits(self) -> pb.Limits:
        """The server's limits (fetched once)."""
        if self._limits is None:
            self._limits = self.info().limits
        return self._limits

    def _rows_per_message(self, n_cols: int) -> int:
        return _arrays.rows_per_message(n_cols, self.limits.max_message_bytes)[0]

    # ------------------------------------------------------------ server

    def info(self) -> pb.ServerInfo:
        """Version, backends, GPU adapters, limits, and whether auth and TLS are on."""
        return self._call(self._server.GetInfo, pb.GetInfoRequest())

    # ------------------------------------------------------------ datasets

    def upload(self, X, name: str = "", columns: Optional[Sequence[str]] = None,
               progress: bool = False) -> pb.Dataset:
        """Uploads a matrix as a dataset, in chunks through the float32 fast
        path. Column names come from ``columns``, else a DataFrame's or
        Table's, else ``x0, x1, …``."""
        names = list(columns) if columns is not None else _arrays.column_names(X)
        matrix = _arrays.as_matrix(X)
        n, d = matrix.shape
        names = names or [f"x{j}" for j in range(d)]
        if len(names) != d:
            raise ValueError(f"{len(names)} column names for {d} columns")
        step = self._rows_per_message(d)
        bar = _Progress(progress, n, "upload", "rows")

        def messages():
            # The row count is declared: a stream cut short is refused, not stored.
            yield pb.UploadRequest(header=pb.UploadHeader(name=name, columns=names, n_rows=n))
            for start in range(0, n, step):
                block = matrix[start:start + step]
                yield pb.UploadRequest(rows=pb.RowBlock(values_f32le=block.astype("<f4", copy=False).tobytes()))
                bar.to(start + len(block))

        try:
            return self._call(self._datasets.Upload, messages())
        finally:
            bar.close()

    def import_file(self, path: str, columns: Optional[Sequence[str]] = None, name: str = "",
                    delimiter: Optional[str] = None, decimal_comma: bool = False,
                    wait: bool = True, progress: bool = False):
        """Imports a CSV or Parquet file from the server's own file system
        (under one of its import roots)."""
        job = self._call(self._datasets.Import, pb.ImportRequest(
            path=str(path), columns=list(columns or ()), name=name,
            text_format=_text_format(delimiter, decimal_comma)))
        return self.wait(job, progress=progress).dataset if wait else job

    def get_dataset(self, dataset_id: str) -> pb.Dataset:
        return self._call(self._datasets.Get, pb.GetDatasetRequest(id=dataset_id))

    def list_datasets(self, page_size: int = 0) -> Iterator[pb.Dataset]:
        """Every dataset, page by page."""
        return self._pages(self._datasets.List, pb.ListDatasetsRequest, "datasets", page_size)

    def delete_dataset(self, dataset_id: str, cascade: bool = False) -> List[str]:
        """Deletes a dataset (and with ``cascade`` its models); returns every id removed."""
        return list(self._call(self._datasets.Delete,
                               pb.DeleteDatasetRequest(id=dataset_id, cascade=cascade)).deleted_ids)

    # ------------------------------------------------------------ jobs

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self._jobs.GetJob, pb.GetJobRequest(id=job_id))

    def list_jobs(self, page_size: int = 0) -> Iterator[pb.Job]:
        return self._pages(self._jobs.ListJobs, pb.ListJobsRequest, "jobs", page_size)

    def cancel_job(self, job_id: str) -> pb.Job:
        return self._call(self._jobs.CancelJob, pb.CancelJobRequest(id=job_id))

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        """The job's progress events, then one event with the finished job."""
        return self._stream(self._jobs.WatchJob, pb.WatchJobRequest(id=job_id))

    def wait(self, job: Union[pb.Job, str], progress: bool = False) -> pb.Job:
        """Waits for a job to finish and returns it; raises
        :class:`segmenta.JobFailed` when it failed or was cancelled."""
        job_id = job if isinstance(job, str) else job.id
        bar = _Progress(progress, 1.0, "job")
        finished = None
        try:
            for event in self.watch_job(job_id):
                if event.HasField("progress"):
                    p = event.progress
                    # Iterations and inertia only while a fit reports them;
                    # other phases ("writing outputs") are named alone.
                    detail = (f" it {p.iteration} inertia {p.inertia:.4g}"
                              if p.iteration or p.inertia else "")
                    bar.to(p.fraction, f"{p.phase}{detail}")
                else:
                    finished = event.finished
                    break
        finally:
            bar.close()
        if finished is None:
            finished = self.get_job(job_id)
        if finished.state not in _DONE:
            raise SegmentaError(grpc.StatusCode.UNKNOWN, f"job {job_id} stream ended while it was still running")
        if finished.state != pb.JOB_STATE_SUCCEEDED:
            state = "cancelled" if finished.state == pb.JOB_STATE_CANCELLED else "failed"
            code = grpc.StatusCode.CANCELLED if state == "cancelled" else grpc.StatusCode.ABORTED
            # The code the server recorded (0 from servers that kept none).
            code = next((c for c in grpc.StatusCode if c.value[0] == finished.error_code and
                         finished.error_code), code)
            raise JobFailed(finished, f"job {job_id} {state}: {in_python(finished.error)}", code)
        return finished

    # ------------------------------------------------------------ k-means

    def fit_kmeans(self, dataset_id: str, k: int, columns: Optional[Sequence[str]] = None,
                   init: Union[str, np.ndarray] = "k-means++", n_init: int = 1,
                   max_iter: Optional[int] = None,
                   tol: float = 1e-4, seed: int = 0, backend: Optional[str] = None,
                   standardize: bool = False, weights_column: str = "", wait: bool = True,
                   progress: bool = False, init_sample: Union[str, int] = "auto"):
        """Fits k-means on a dataset. ``init``: ``"k-means++"``,
        ``"k-means||"``, ``"random"`` or a k × d array of initial centroids
        (original units). ``init_sample``: the rows k-means++ and k-means||
        draw from: ``"auto"`` (a uniform sample of 1,024 rows per centre, at
        least 65,536, on unweighted data of more than twice that), ``"all"``
        or a number of rows (at least k; a sample only where there are more
        than twice as many). ``max_iter``: unset, 300 or what the server's
        ``max_iterations`` allows. Returns the :class:`KMeansModel` (or the
        job, with ``wait=False``)."""
        # 0 means "the server's default" on the wire: refused here, named.
        asked = (("k", k), ("n_init", n_init)) + ((("max_iter", max_iter),) if max_iter is not None else ())
        for name, value in asked:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        request = pb.FitKMeansRequest(
            dataset_id=dataset_id, k=int(k), columns=list(columns or ()), n_init=int(n_init),
            max_iter=int(max_iter or 0), tol=float(tol), seed=int(seed), backend=_backend(backend),
            standardize=bool(standardize), weights_column=weights_column or "")
        if init_sample == "all":
            request.init_sample_rows = 0
        elif isinstance(init_sample, (int, np.integer)) and not isinstance(init_sample, bool) \
                and init_sample > 0:
            request.init_sample_rows = int(init_sample)
        elif init_sample != "auto":
            raise ValueError(f"init_sample must be 'auto', 'all' or a positive number of rows, "
                             f"got {init_sample!r}")
        if isinstance(init, str):
            try:
                request.init = _INITS[init]
            except KeyError:
                raise ValueError(f"unknown init {init!r}: use 'k-means++', 'k-means||', 'random' "
                                 "or an array of initial centroids") from None
        else:
            centres = _arrays.as_matrix(init, "init")
            if centres.shape[0] != k:
                raise ValueError(f"init has {centres.shape[0]} centroids for k = {k}")
            request.init = pb.INIT_METHOD_GIVEN
            request.initial_centroids.extend(centres.reshape(-1).tolist())
        job = self._call(self._clustering.FitKMeans, request)
        return self.wait(job, progress=progress).kmeans if wait else job

    def assign(self, model_id: str, X) -> Assignment:
        """Nearest centroid per row (raw units in; the model's scaler applies).
        Large inputs go in several calls within the server's limits."""
        matrix = _arrays.as_matrix(X)
        n, d = matrix.shape
        step = self._rows_per_message(max(d, 6))  # an answer takes up to 21 bytes a row
        if self.limits.max_assign_rows:
            step = min(step, int(self.limits.max_assign_rows))
        responses = []
        for start in range(0, n, step):
            block = matrix[start:start + step]
            responses.append(self._call(self._clustering.Assign, pb.AssignRequest(
                model_id=model_id, rows=block.reshape(-1), n_features=d)))
        return _assignment(responses)

    def assign_stream(self, model_id: str, batches: Iterable) -> Iterator[Assignment]:
        """One :class:`Assignment` per batch of rows, in order, over one stream."""
        def requests():
            for batch in batches:
                rows = _arrays.as_matrix(batch)
                yield pb.AssignRequest(model_id=model_id, rows=rows.reshape(-1), n_features=rows.shape[1])

        try:
            for r in self._clustering.AssignStream(requests()):
                yield _assignment([r])
        except grpc.RpcError as e:
            raise self._error(e) from None

    def evaluate(self, model_id: str, dataset_id: str, silhouette_sample_size: int = 0,
                 seed: int = 0) -> pb.EvaluateResponse:
        """Inertia, silhouette (on a sample), Davies-Bouldin and Calinski-Harabasz."""
        return self._call(self._clustering.Evaluate, pb.EvaluateRequest(
            model_id=model_id, dataset_id=dataset_id,
            silhouette_sample_size=int(silhouette_sample_size), seed=int(seed)))

    # ------------------------------------------------------------ distributed fits

    def put_partition(self, fit_id: str, index: int, X, weights=None,
                      ttl_seconds: int = 0) -> pb.Partition:
        """Caches a partition's rows on the server under ``(fit_id, index)``
        (in chunks). The same key again replaces it; a retried task is safe."""
        matrix = _arrays.as_matrix(X)
        n, d = matrix.shape
        w = _arrays.as_weights(weights, n) if weights is not None else None
        step = self._rows_per_message(d + (1 if w is not None else 0))
        key = pb.PartitionKey(fit_id=fit_id, index=int(index))

        def messages():
            yield pb.PutPartitionRequest(header=pb.PartitionHeader(
                key=key, n_features=d, has_weights=w is not None, ttl_seconds=int(ttl_seconds),
                n_rows=n))
            for start in range(0, n, step):
                rows = pb.PartitionRows(values_f32le=matrix[start:start + step].astype("<f4").tobytes())
                if w is not None:
                    rows.weights_f32le = w[start:start + step].astype("<f4").tobytes()
                yield pb.PutPartitionRequest(rows=rows)

        return self._call(self._clustering.PutPartition, messages())

    def release_partitions(self, fit_id: str) -> int:
        """Drops every cached partition of the fit; returns how many."""
        return self._call(self._clustering.ReleasePartitions,
                          pb.ReleasePartitionsRequest(fit_id=fit_id)).released

    @staticmethod
    def _source(partition=None, rows=None, weights=None) -> pb.RowSource:
        if (partition is None) == (rows is None):
            raise ValueError("give one of partition=(fit_id, index) and rows=")
        if partition is not None:
            fit_id, index = partition
            return pb.RowSource(partition=pb.PartitionKey(fit_id=fit_id, index=int(index)))
        matrix = _arrays.as_matrix(rows, "rows")
        inline = pb.InlineRows(values_f32le=matrix.astype("<f4").tobytes(), n_features=matrix.shape[1])
        if weights is not None:
            inline.weights_f32le = _arrays.as_weights(weights, matrix.shape[0]).astype("<f4").tobytes()
        return pb.RowSource(rows=inline)

    def partial_step(self, centroids, *, partition=None, rows=None, weights=None,
                     backend: Optional[str] = None) -> PartialSums:
        """One Lloyd step's sums over one partition (cached, or rows sent inline)."""
        c = _arrays.as_matrix(centroids, "centroids")
        r = self._call(self._clustering.PartialStep, pb.PartialStepRequest(
            rows=self._source(partition, rows, weights),
            centroids=c.reshape(-1), backend=_backend(backend)))
        return PartialSums(np.asarray(r.sums, dtype=np.float64).reshape(r.k, r.n_features),
                           np.asarray(r.weights, dtype=np.float64), r.inertia, r.n_rows)

    def partition_cost(self, centers, *, partition=None, rows=None, weights=None,
                       backend: Optional[str] = None):
        """(Σ w·d² to the nearest centre, rows, total weight) of one partition."""
        c = _arrays.as_matrix(centers, "centers")
        r = self._call(self._clustering.PartitionCost, pb.PartitionCostRequest(
            rows=self._source(partition, rows, weights),
            centers=c.reshape(-1), backend=_backend(backend)))
        return r.cost, r.n_rows, r.total_weight

    def sample_by_cost(self, centers, oversampling: float, total_cost: float, seed: int, *,
                       partition=None, rows=None, weights=None,
                       backend: Optional[str] = None) -> np.ndarray:
        """k-means||'s seeded sample of one partition's rows (rows × d, float32)."""
        c = _arrays.as_matrix(centers, "centers")
        r = self._call(self._clustering.SampleByCost, pb.SampleByCostRequest(
            rows=self._source(partition, rows, weights),
            centers=c.reshape(-1), oversampling=float(oversampling), total_cost=float(total_cost),
            seed=int(seed) & 0xFFFFFFFFFFFFFFFF, backend=_backend(backend)))
        return np.frombuffer(r.values_f32le, dtype="<f4").reshape(r.n_rows, r.n_features)

    def candidate_weights(self, candidates, *, partition=None, rows=None, weights=None,
                          backend: Optional[str] = None) -> np.ndarray:
        """Per candidate, the weight of one partition's rows nearest to it."""
        c = _arrays.as_matrix(candidates, "candidates")
        r = self._call(self._clustering.CandidateWeights, pb.CandidateWeightsRequest(
            rows=self._source(partition, rows, weights),
            candidates=c.reshape(-1), backend=_backend(backend)))
        return np.asarray(r.weights, dtype=np.float64)

    def create_kmeans(self, centroids, columns: Optional[Sequence[str]] = None, inertia: float = 0.0,
                      n_iter: int = 0, converged: bool = False, inertia_history=(),
                      cluster_sizes=()) -> pb.KMeansModel:
        """Registers centroids fitted elsewhere as a k-means model (for Assign)."""
        c = _arrays.as_matrix(centroids, "centroids")
        return self._call(self._models.CreateKMeans, pb.CreateKMeansRequest(
            columns=list(columns or ()), k=c.shape[0], centroids=c.reshape(-1),
            inertia=float(inertia), n_iter=int(n_iter), converged=bool(converged),
            inertia_history=[float(v) for v in inertia_history],
            cluster_sizes=[int(v) for v in cluster_sizes])).kmeans

    # ------------------------------------------------------------ PCA

    def fit_pca(self, dataset_id: str, n_components: int, columns: Optional[Sequence[str]] = None,
                whiten: bool = False, backend: Optional[str] = None, wait: bool = True,
                progress: bool = False):
        """Fits PCA on a dataset; returns the :class:`PcaModel` (or the job)."""
        job = self._call(self._decomposition.FitPca, pb.FitPcaRequest(
            dataset_id=dataset_id, n_components=int(n_components), columns=list(columns or ()),
            whiten=bool(whiten), backend=_backend(backend)))
        return self.wait(job, progress=progress).pca if wait else job

    def transform(self, model_id: str, X) -> np.ndarray:
        """Projects rows onto the model's components: rows × n_components."""
        matrix = _arrays.as_matrix(X)
        step = self._rows_per_message(matrix.shape[1])
        out = []
        for start in range(0, matrix.shape[0], step):
            r = self._call(self._decomposition.Transform, pb.TransformRequest(
                model_id=model_id, rows=matrix[start:start + step].reshape(-1),
                n_features=matrix.shape[1]))
            out.append(np.asarray(r.values, dtype=np.float32).reshape(-1, r.n_components))
        return np.concatenate(out)

    def inverse_transform(self, model_id: str, Y) -> np.ndarray:
        """Components back to the original columns: rows × len(columns)."""
        matrix = _arrays.as_matrix(Y, "Y")
        step = self._rows_per_message(matrix.shape[1])
        out = []
        for start in range(0, matrix.shape[0], step):
            block = matrix[start:start + step]
            r = self._call(self._decomposition.InverseTransform, pb.InverseTransformRequest(
                model_id=model_id, values=block.reshape(-1), n_components=block.shape[1]))
            out.append(np.asarray(r.rows, dtype=np.float32).reshape(block.shape[0], -1))
        return np.concatenate(out)

    # ------------------------------------------------------------ models

    def get_model(self, model_id: str) -> pb.Model:
        return self._call(self._models.Get, pb.GetModelRequest(id=model_id))

    def list_models(self, page_size: int = 0) -> Iterator[pb.Model]:
        return self._pages(self._models.List, pb.ListModelsRequest, "models", page_size)

    def delete_model(self, model_id: str) -> List[str]:
        return list(self._call(self._models.Delete, pb.DeleteModelRequest(id=model_id)).deleted_ids)

    def export_model(self, model_id: str) -> bytes:
        """The model as a model file (what ``segmenta assign`` reads offline)."""
        return self._call(self._models.Export, pb.GetModelRequest(id=model_id)).content

    def import_model(self, content: Union[bytes, str, os.PathLike]) -> pb.Model:
        """Registers a model file (bytes or a local path) as a new model."""
        if not isinstance(content, (bytes, bytearray)):
            content = pathlib.Path(content).read_bytes()
        return self._call(self._models.Import, pb.ImportModelRequest(content=bytes(content)))

    # ------------------------------------------------------------ segmentations

    def upload_transactions(self, data: Union[bytes, str, os.PathLike], name: str = "",
                            format: Optional[str] = None, delimiter: Optional[str] = None,
                            decimal_comma: bool = False, date_format: Optional[str] = None,
                            progress: bool = False) -> pb.TransactionLog:
        """Uploads a transaction log: a local CSV/Parquet path, or the file's
        bytes (``format`` ``"csv"`` or ``"parquet"``; default from the name)."""
        if not isinstance(data, (bytes, bytearray)):
            path = pathlib.Path(data)
            name = name or path.name
            data = path.read_bytes()
        if format is None:
            suffix = pathlib.Path(name).suffix.lower()
            file_format = _FORMATS.get(suffix, pb.FILE_FORMAT_CSV)
        else:
            file_format = {"csv": pb.FILE_FORMAT_CSV, "parquet": pb.FILE_FORMAT_PARQUET}.get(format.lower())
            if file_format is None:
                raise ValueError(f"unknown format {format!r}: use 'csv' or 'parquet'")
        chunk = _arrays.rows_per_message(1, self.limits.max_message_bytes)[1]
        bar = _Progress(progress, len(data), "upload", "B")
        header = pb.TransactionsHeader(name=name, format=file_format, size_bytes=len(data),
                                       text_format=_text_format(delimiter, decimal_comma, date_format))

        def messages():
            yield pb.UploadTransactionsRequest(header=header)
            for start in range(0, len(data), chunk):
                yield pb.UploadTransactionsRequest(chunk=bytes(data[start:start + chunk]))
                bar.to(min(start + chunk, len(data)))

        try:
            return self._call(self._segmentations.UploadTransactions, messages())
        finally:
            bar.close()

    def start_segment(self, transactions_id: str = "", transactions_path: str = "",
                      k: Optional[int] = None, k_range: Optional[Sequence[int]] = None,
                      as_of: Optional[str] = None, previous: Optional[str] = None,
                      columns: Optional[Dict[str, str]] = None, reject_bad_rows: bool = False,
                      max_bad_rows: Optional[float] = None, features: Optional[Sequence[str]] = None,
                      min_share: Optional[float] = None, outlier_percentile: float = 0.0,
                      seed: int = 0, n_init: int = 0, backend: Optional[str] = None,
                      delimiter: Optional[str] = None, decimal_comma: bool = False,
                      date_format: Optional[str] = None, clv: bool = False,
                      time_unit: str = "week", horizon: int = 0, discount_rate: float = 0.0,
                      churn_thresholds: Optional[Sequence[float]] = None,
                      holdout_share: Optional[float] = None,
                      experiment_salt: Optional[str] = None) -> pb.Job:
        """Starts a segment job (see :func:`segmenta.segment` for the options)."""
        _check_source(transactions_id, transactions_path)
        request = pb.SegmentRequest(
            columns=_columns(columns), as_of=as_of or "",
            previous_segmentation_id=previous or "",
            bad_rows=pb.BAD_ROW_POLICY_REJECT if reject_bad_rows else pb.BAD_ROW_POLICY_SKIP,
            outlier_percentile=float(outlier_percentile), seed=int(seed), n_init=int(n_init),
            backend=_backend(backend), features=list(features or ()))
        if transactions_id:
            request.transactions_id = transactions_id
        else:
            request.transactions_path = str(transactions_path)
        if k is not None and k_range is not None:
            raise ValueError("give k or k_range, not both")
        if k is not None:
            request.k = int(k)
        elif k_range is not None:
            lo, hi = k_range
            request.k_range.CopyFrom(pb.KRange(min=int(lo), max=int(hi)))
        if max_bad_rows is not None:
            request.max_bad_rows = float(max_bad_rows)
        if min_share is not None:
            request.min_share = float(min_share)
        if delimiter is not None or decimal_comma or date_format:
            request.text_format.CopyFrom(_text_format(delimiter, decimal_comma, date_format))
        if clv:
            request.value.CopyFrom(_value_options(time_unit, horizon, discount_rate, churn_thresholds))
            request.value.enabled = True
        if experiment_salt is not None and holdout_share is None:
            raise ValueError("experiment_salt needs holdout_share")
        if holdout_share is not None:
            _check_holdout_share(holdout_share)
            request.experiment.CopyFrom(pb.ExperimentOptions(
                holdout_share=float(holdout_share), salt=experiment_salt or ""))
        return self._call(self._segmentations.Segment, request)

    def start_clv(self, transactions_id: str = "", transactions_path: str = "", *,
                  calibration_end: str, holdout_end: Optional[str] = None,
                  time_unit: str = "week", horizon: int = 0, discount_rate: float = 0.0,
                  churn_thresholds: Optional[Sequence[float]] = None,
                  columns: Optional[Dict[str, str]] = None, reject_bad_rows: bool = False,
                  max_bad_rows: Optional[float] = None, delimiter: Optional[str] = None,
                  decimal_comma: bool = False, date_format: Optional[str] = None) -> pb.Job:
        """Starts a CLV job (see :func:`segmenta.clv` for the options)."""
        _check_source(transactions_id, transactions_path)
        request = pb.ClvRequest(
            columns=_columns(columns), calibration_end=str(calibration_end),
            holdout_end=str(holdout_end or ""),
            value=_value_options(time_unit, horizon, discount_rate, churn_thresholds),
            bad_rows=pb.BAD_ROW_POLICY_REJECT if reject_bad_rows else pb.BAD_ROW_POLICY_SKIP)
        if transactions_id:
            request.transactions_id = transactions_id
        else:
            request.transactions_path = str(transactions_path)
        if max_bad_rows is not None:
            request.max_bad_rows = float(max_bad_rows)
        if delimiter is not None or decimal_comma or date_format:
            request.text_format.CopyFrom(_text_format(delimiter, decimal_comma, date_format))
        return self._call(self._segmentations.Clv, request)

    def get_clv(self, clv_id: str) -> pb.ClvRun:
        return self._call(self._segmentations.GetClv, pb.GetClvRequest(id=clv_id))

    def uplift(self, segmentation_id: str, customer_ids: Sequence[str], converted: Sequence,
               revenue: Optional[Sequence[float]] = None,
               block_bytes: Optional[int] = None) -> pb.UpliftReport:
        """A campaign's uplift on the groups of a segmentation made with
        ``holdout_share``: one outcome per customer (``converted`` true/false
        or 0/1, ``revenue`` default 0), sent in blocks of about
        ``block_bytes`` (default half the server's message limit). Nothing
        sent is stored on the server."""
        ids = [str(c) for c in customer_ids]
        flags = [_converted(c, i) for i, c in enumerate(converted)]
        money = [0.0] * len(ids) if revenue is None else [float(r) for r in revenue]
        if not len(ids) == len(flags) == len(money):
            raise ValueError(f"{len(ids)} customer ids, {len(flags)} converted and {len(money)} "
                             "revenue values: give one of each per customer")
        budget = block_bytes or max(self.limits.max_message_bytes // 2, 1024)

        def messages():
            yield pb.UpliftRequest(header=pb.UpliftHeader(segmentation_id=segmentation_id))
            start = 0
            while start < len(ids):
                end, size = start, 0
                while end < len(ids):
                    cost = len(ids[end].encode()) + 16  # the id, a flag, a double, tags
                    if end > start and size + cost > budget:
                        break
                    size += cost
                    end += 1
                yield pb.UpliftRequest(outcomes=pb.OutcomeBlock(
                    customer_ids=ids[start:end], converted=flags[start:end],
                    revenue=money[start:end]))
                start = end

        return self._call(self._segmentations.Uplift, messages())

    def get_segmentation(self, segmentation_id: str) -> pb.Segmentation:
        return self._call(self._segmentations.GetSegmentation,
                          pb.GetSegmentationRequest(id=segmentation_id))

    def download_artifact(self, segmentation_id: str, name: str,
                          path: Union[None, str, os.PathLike] = None) -> bytes:
        """One of a segmentation's artifacts (``report.html``, a chart,
        ``customers.csv``, ``customers.parquet``, ``segments.json``,
        ``model.json``) or a CLV run's (``clv.html``, a chart,
        ``customers.csv``, ``customers.parquet``, ``clv.json``); also written
        to ``path`` when given."""
        data = b"".join(chunk.data for chunk in self._stream(
            self._segmentations.DownloadArtifact,
            pb.DownloadArtifactRequest(segmentation_id=segmentation_id, name=name)))
        if path is not None:
            pathlib.Path(path).write_bytes(data)
        return data

    def list_transactions(self, page_size: int = 0) -> Iterator[pb.TransactionLog]:
        """Every uploaded transaction log, page by page."""
        return self._pages(self._segmentations.ListTransactions, pb.ListTransactionsRequest,
                           "transactions", page_size)

    def delete_transactions(self, transactions_id: str, cascade: bool = False) -> List[str]:
        return list(self._call(self._segmentations.DeleteTransactions,
                               pb.DeleteTransactionsRequest(id=transactions_id, cascade=cascade)).deleted_ids)

    def delete_segmentation(self, segmentation_id: str) -> List[str]:
        return list(self._call(self._segmentations.DeleteSegmentation,
                               pb.DeleteSegmentationRequest(id=segmentation_id)).deleted_ids)

    # ------------------------------------------------------------ privacy

    def erase_customer(self, customer_id: str) -> List[pb.ErasedObject]:
        """Removes one customer from every stored log, output and job record."""
        return list(self._call(self._privacy.EraseCustomer,
                               pb.EraseCustomerRequest(customer_id=customer_id)).changed)
