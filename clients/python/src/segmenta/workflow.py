"""``segmenta.segment``, ``segmenta.clv`` and ``segmenta.uplift``: the
customer workflow from Python.

A transaction log (a pandas DataFrame, a local CSV/Parquet path, or the
file's bytes) goes in; the customers with their features and segment (or
their predicted value), the segment profiles and the choice of k come back
as pandas DataFrames. A campaign's outcomes go in to ``uplift``; its uplift
per segment comes back.
"""
from __future__ import annotations

import io
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Union

from .client import Client, _check_holdout_share, _value_options
from .errors import JobFailed, SegmentaError
from .estimators import _client
from .v1 import segmenta_pb2 as pb

__all__ = ["segment", "SegmentResult", "clv", "ClvResult", "uplift", "UpliftResult"]

ARTIFACTS_ALL = "all"


@dataclass
class SegmentResult:
    """What a segment run returns.

    ``customers``: one row per customer (id, features, RFM scores, segment id
    and name). ``segments``: one row per segment (id, size, share,
    description, the median of each feature). ``k_sweep``: the criteria per
    k (empty when k was given). ``segmentation``: the server's message
    (its ``id`` refreshes the next run: ``segment(..., previous=result.id)``).
    ``artifacts``: name → bytes of the files asked for."""

    segmentation: pb.Segmentation
    customers: "object"
    segments: "object"
    k_sweep: "object"
    transactions_id: str
    artifacts: Dict[str, bytes] = field(default_factory=dict)
    _client: Optional[Client] = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.segmentation.id

    @property
    def k(self) -> int:
        return self.segmentation.k

    def delete(self) -> list:
        """Deletes the uploaded log and everything made from it on the server."""
        return self._client.delete_transactions(self.transactions_id, cascade=True)


@dataclass
class ClvResult:
    """What a CLV run returns.

    ``customers``: one row per customer (``customer_id, x, t_x, T, p_alive,
    expected_purchases, expected_spend, clv, value_tier, churn_risk``).
    ``parameters``: one row per fitted parameter (model, parameter,
    estimate, std_error). ``holdout``: with a holdout end, mean predicted
    and actual holdout purchases by calibration repeat purchases (0 … 7+);
    else empty. ``run``: the server's message (fit diagnostics, MAE,
    totals, warnings). ``artifacts``: name → bytes of the files asked for."""

    run: pb.ClvRun
    customers: "object"
    parameters: "object"
    holdout: "object"
    transactions_id: str
    artifacts: Dict[str, bytes] = field(default_factory=dict)
    _client: Optional[Client] = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.run.id

    def delete(self) -> list:
        """Deletes the uploaded log and everything made from it on the server."""
        return self._client.delete_transactions(self.transactions_id, cascade=True)


@dataclass
class UpliftResult:
    """A campaign's uplift. ``table``: one row per segment and one ``all``
    (sizes, conversion rates, absolute uplift with its 95 % interval and
    p-value, relative uplift, revenue per customer and its uplift).
    ``report``: the server's message, with ``warnings``."""

    report: pb.UpliftReport
    table: "object"

    @property
    def warnings(self) -> list:
        return list(self.report.warnings)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("segmenta.segment needs pandas: pip install 'segmenta[pandas]'") from None
    return pandas


def _log_bytes(transactions, name: str):
    """The log as (bytes, name with the right suffix)."""
    if isinstance(transactions, (bytes, bytearray)):
        return bytes(transactions), name or "transactions.csv"
    if isinstance(transactions, (str, os.PathLike)):
        path = pathlib.Path(transactions)
        return path.read_bytes(), name or path.name
    if hasattr(transactions, "to_parquet") or hasattr(transactions, "to_csv"):  # pandas
        buffer = io.BytesIO()
        try:
            transactions.to_parquet(buffer, index=False)
            return buffer.getvalue(), (pathlib.Path(name).stem if name else "transactions") + ".parquet"
        except (ImportError, ValueError):
            return transactions.to_csv(index=False).encode(), (pathlib.Path(name).stem if name else "transactions") + ".csv"
    if hasattr(transactions, "schema") and hasattr(transactions, "num_rows"):  # pyarrow Table
        import pyarrow.parquet as pq
        buffer = io.BytesIO()
        pq.write_table(transactions, buffer)
        return buffer.getvalue(), (pathlib.Path(name).stem if name else "transactions") + ".parquet"
    raise TypeError("transactions must be a pandas DataFrame, a pyarrow Table, a path or bytes, "
                    f"not {type(transactions).__name__}")


def _read_customers(client: Client, seg):
    pandas = _pandas()
    if "customers.parquet" in seg.artifacts:
        try:
            data = client.download_artifact(seg.id, "customers.parquet")
            return pandas.read_parquet(io.BytesIO(data))
        except ImportError:
            pass
    data = client.download_artifact(seg.id, "customers.csv")
    return pandas.read_csv(io.BytesIO(data), dtype={"customer_id": str})


def _profiles(seg: pb.Segmentation):
    pandas = _pandas()
    rows = []
    for s in seg.segments:
        row = {"segment": s.id, "size": s.size, "share": s.share, "description": s.description}
        for f in s.features:
            row[f"{f.feature}_median"] = f.median
            row[f"{f.feature}_lift"] = f.lift
        if s.HasField("value"):
            v = s.value
            row.update(mean_clv=v.mean_clv, total_clv=v.total_clv, value_share=v.value_share,
                       mean_p_alive=v.mean_p_alive, high_churn_risk=v.high_churn_risk)
        if s.control:
            row["control"] = s.control
        rows.append(row)
    return pandas.DataFrame(rows)


def _sweep(seg: pb.Segmentation):
    pandas = _pandas()
    rows = [{"k": s.k, "inertia": s.inertia, "silhouette": s.silhouette,
             "davies_bouldin": s.davies_bouldin, "calinski_harabasz": s.calinski_harabasz,
             "min_share": s.min_share, "stability": s.stability, "eligible": s.eligible,
             "recommended": s.k == seg.k_sweep.recommended_k}
            for s in seg.k_sweep.scores]
    return pandas.DataFrame(rows, columns=["k", "inertia", "silhouette", "davies_bouldin",
                                           "calinski_harabasz", "min_share", "stability",
                                           "eligible", "recommended"])


def segment(transactions, *, client: Union[None, str, Client] = None, name: str = "",
            k: Optional[int] = None, k_range: Optional[Sequence[int]] = None,
            as_of: Optional[str] = None, previous: Optional[str] = None,
            customer: Optional[str] = None, date: Optional[str] = None,
            amount: Optional[str] = None, quantity: Optional[str] = None,
            order: Optional[str] = None, features: Optional[Sequence[str]] = None,
            min_share: Optional[float] = None, max_bad_rows: Optional[float] = None,
            reject_bad_rows: bool = False, seed: int = 0, n_init: int = 0,
            backend: Optional[str] = None, delimiter: Optional[str] = None,
            decimal_comma: bool = False, date_format: Optional[str] = None,
            artifacts: Union[None, str, Sequence[str]] = None,
            artifacts_dir: Union[None, str, os.PathLike] = None,
            clv: bool = False, time_unit: str = "week", horizon: int = 0,
            discount_rate: float = 0.0, churn_thresholds: Optional[Sequence[float]] = None,
            holdout_share: Optional[float] = None, experiment_salt: Optional[str] = None,
            progress: bool = False) -> SegmentResult:
    """Segments customers from a transaction log on a Segmenta server.

    ``customer``/``date``/``amount``/``quantity``/``order`` name the log's
    columns (defaults ``customer_id``, ``date``, ``amount``). ``k`` fixes the
    number of segments; otherwise ``k_range`` (default 3..8) is swept and the
    recommended k used. ``previous`` refreshes a earlier run (its segment
    ids are kept). ``artifacts``: ``"all"`` or names to download (also
    written under ``artifacts_dir`` when given).

    ``clv=True`` also predicts each customer's value and churn risk as of
    the as-of date (options as in :func:`clv`): value columns in
    ``customers``, ``mean_clv``, ``total_clv``, ``value_share``,
    ``mean_p_alive`` and ``high_churn_risk`` in ``segments``.
    ``holdout_share`` puts that share of each segment in a campaign's
    control group (column ``group``; ``control`` in ``segments``), drawn by
    a keyed hash of ``experiment_salt`` and the customer id; measure the
    campaign with :func:`uplift`.

    The uploaded log and the run stay on the server (a later refresh needs
    them) until ``result.delete()``; when the job fails, the log is deleted
    (with an admin key; otherwise a warning names it).
    """
    _pandas()  # before any upload: the results come back as DataFrames
    client = _client(client)
    roles = {"customer": customer, "date": date, "amount": amount, "quantity": quantity,
             "order": order}
    if clv:
        _value_options(time_unit, horizon, discount_rate, churn_thresholds)  # checked before upload
    if experiment_salt is not None and holdout_share is None:
        raise ValueError("experiment_salt needs holdout_share")
    if holdout_share is not None:
        _check_holdout_share(holdout_share)  # before the upload

    def start(log_id):
        return client.start_segment(
            transactions_id=log_id, k=k, k_range=k_range, as_of=as_of, previous=previous,
            columns={r: c for r, c in roles.items() if c}, reject_bad_rows=reject_bad_rows,
            max_bad_rows=max_bad_rows, features=features, min_share=min_share, seed=seed,
            n_init=n_init, backend=backend, clv=clv, time_unit=time_unit, horizon=horizon,
            discount_rate=discount_rate, churn_thresholds=churn_thresholds,
            holdout_share=holdout_share, experiment_salt=experiment_salt)

    log_id, job = _run(client, transactions, name, start, progress, delimiter=delimiter,
                       decimal_comma=decimal_comma, date_format=date_format)
    seg = job.segmentation
    _warn_input(seg.input)
    if seg.value_unavailable:
        warnings.warn(f"no customer value (the segments are whole without it): "
                      f"{seg.value_unavailable}", stacklevel=2)
    files = _download(client, seg.id, seg.artifacts, artifacts, artifacts_dir)
    return SegmentResult(segmentation=seg, customers=_read_customers(client, seg),
                         segments=_profiles(seg), k_sweep=_sweep(seg), transactions_id=log_id,
                         artifacts=files, _client=client)


def _warn_input(summary: pb.InputSummary):
    """What ``segmenta segment`` warns of on stderr, as Python warnings:
    rows skipped as unreadable and lines dated after today."""
    if summary.lines_after_today:
        warnings.warn(f"{summary.lines_after_today} line(s) dated after today (the latest "
                      f"{summary.latest_future_date}) left out: check the dates", stacklevel=3)
    if summary.bad_rows:
        by = ", ".join(f"{n} {problem.replace('_', ' ')}"
                       for problem, n in sorted(summary.bad_rows_by_problem.items()))
        warnings.warn(f"{summary.bad_rows} of {summary.rows_read} rows skipped as unreadable "
                      f"({by}); the segmentation's input summary has them", stacklevel=3)


def _run(client: Client, transactions, name: str, start, progress: bool, **text):
    """Uploads the log, starts the job with ``start(log_id)`` and waits for
    it. When the job fails, nothing came of the log: it is deleted (with an
    admin key; otherwise a warning names it)."""
    data, name = _log_bytes(transactions, name)
    log = client.upload_transactions(data, name=name, progress=progress, **text)

    def forget():
        try:
            client.delete_transactions(log.id, cascade=True)
        except SegmentaError as e:
            warnings.warn(f"the uploaded log stays on the server as {log.id}: {e}", stacklevel=4)

    try:
        job = start(log.id)
    except SegmentaError:
        forget()  # refused: nothing runs on the log
        raise
    try:
        job = client.wait(job, progress=progress)
    except JobFailed:
        forget()  # nothing came of the log
        raise
    # Any other error (the network) leaves the job running and its log in place.
    return log.id, job


def _download(client: Client, run_id: str, available, artifacts, artifacts_dir) -> Dict[str, bytes]:
    """The artifacts asked for (``"all"`` or names; all when only a
    directory is given), also written under ``artifacts_dir``."""
    available = list(available)
    wanted = available if artifacts == ARTIFACTS_ALL else list(artifacts or ())
    if artifacts_dir is not None and not wanted:
        wanted = available
    unknown = [a for a in wanted if a not in available]
    if unknown:
        raise ValueError(f"no artifact(s) {unknown}; this run has {available}")
    files = {}
    for artifact in wanted:
        path = pathlib.Path(artifacts_dir) / artifact if artifacts_dir is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        files[artifact] = client.download_artifact(run_id, artifact, path)
    return files


def _clv_parameters(run: pb.ClvRun):
    pandas = _pandas()
    b, g = run.bgnbd, run.gamma_gamma
    rows = [("BG/NBD", "r", b.r, b.r_std_error), ("BG/NBD", "alpha", b.alpha, b.alpha_std_error),
            ("BG/NBD", "a", b.a, b.a_std_error), ("BG/NBD", "b", b.b, b.b_std_error),
            ("Gamma-Gamma", "p", g.p, g.p_std_error), ("Gamma-Gamma", "q", g.q, g.q_std_error),
            ("Gamma-Gamma", "v", g.v, g.v_std_error)]
    return pandas.DataFrame(rows, columns=["model", "parameter", "estimate", "std_error"])


def _holdout(run: pb.ClvRun):
    pandas = _pandas()
    rows = [(b.repeat_purchases, b.customers, b.mean_predicted, b.mean_actual)
            for b in run.holdout.by_repeat_purchases]
    return pandas.DataFrame(rows, columns=["repeat_purchases", "customers", "mean_predicted",
                                           "mean_actual"])


def clv(transactions, *, calibration_end: str, client: Union[None, str, Client] = None,
        name: str = "", holdout_end: Optional[str] = None, time_unit: str = "week",
        horizon: int = 0, discount_rate: float = 0.0,
        churn_thresholds: Optional[Sequence[float]] = None, customer: Optional[str] = None,
        date: Optional[str] = None, amount: Optional[str] = None,
        quantity: Optional[str] = None, order: Optional[str] = None,
        max_bad_rows: Optional[float] = None, reject_bad_rows: bool = False,
        delimiter: Optional[str] = None, decimal_comma: bool = False,
        date_format: Optional[str] = None, artifacts: Union[None, str, Sequence[str]] = None,
        artifacts_dir: Union[None, str, os.PathLike] = None,
        progress: bool = False) -> ClvResult:
    """Predicts each customer's lifetime value and churn risk from a
    transaction log on a Segmenta server (as ``segmenta clv``).

    BG/NBD (purchases) and Gamma-Gamma (spend) are fitted on the purchases
    up to ``calibration_end`` (YYYY-MM-DD); value is summed over ``horizon``
    periods of ``time_unit`` (``day``, ``week``, ``month``; default a year),
    discounted at ``discount_rate`` per period. ``churn_thresholds``:
    ``(high, medium)`` P(alive) cut-offs (default 0.5, 0.8). With
    ``holdout_end`` the predictions are checked against the purchases
    after the calibration end. Column and text options as in
    :func:`segment` (but no ``order``: the models count purchase days).
    """
    _pandas()
    if order:
        raise ValueError("order is not used by clv: its models count purchase days (several "
                         "orders on one day are one purchase, as in the BG/NBD paper)")
    client = _client(client)
    roles = {"customer": customer, "date": date, "amount": amount, "quantity": quantity}
    _value_options(time_unit, horizon, discount_rate, churn_thresholds)  # checked before upload

    def start(log_id):
        return client.start_clv(
            transactions_id=log_id, calibration_end=calibration_end, holdout_end=holdout_end,
            time_unit=time_unit, horizon=horizon, discount_rate=discount_rate,
            churn_thresholds=churn_thresholds, columns={r: c for r, c in roles.items() if c},
            reject_bad_rows=reject_bad_rows, max_bad_rows=max_bad_rows)

    log_id, job = _run(client, transactions, name, start, progress, delimiter=delimiter,
                       decimal_comma=decimal_comma, date_format=date_format)
    run = job.clv
    for w in run.warnings:  # as `segmenta clv` prints them on stderr
        warnings.warn(w, stacklevel=2)
    files = _download(client, run.id, run.artifacts, artifacts, artifacts_dir)
    return ClvResult(run=run, customers=_read_customers(client, run), parameters=_clv_parameters(run),
                     holdout=_holdout(run), transactions_id=log_id, artifacts=files, _client=client)


def _interval(message, field_name: str):
    return getattr(message, field_name) if message.HasField(field_name) else None


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def uplift(segmentation, outcomes, *, client: Union[None, str, Client] = None,
           customer: str = "customer_id", converted: str = "converted",
           revenue: Optional[str] = "revenue", decimal_comma: bool = False) -> UpliftResult:
    """A campaign's uplift, treated against control, per segment and
    overall (as ``segmenta uplift``).

    ``segmentation``: a :class:`SegmentResult` (or its id) made with
    ``holdout_share``. ``outcomes``: a DataFrame, or the path of a CSV or
    Parquet file, with one row per customer (columns ``customer``,
    ``converted`` 0/1 or true/false, ``revenue``, empty meaning 0;
    ``revenue=None`` when there is none: the revenue figures are then NaN).
    A CSV's delimiter is sniffed from its header; ``decimal_comma`` reads
    revenue written ``12,50`` and ``1.234,50``. Assigned customers without
    a row count as not converted. Nothing of the outcomes is stored on the
    server.
    """
    pandas = _pandas()
    if isinstance(outcomes, (str, os.PathLike)):
        path = pathlib.Path(outcomes)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            outcomes = pandas.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            # Ids stay text: "007" is not customer 7. The delimiter is the
            # header's, as a spreadsheet in any locale saves it.
            with open(path, newline="", encoding="utf-8-sig") as f:
                head = f.readline()
            sep = "\t" if suffix == ".tsv" else max(",;\t|", key=head.count)
            outcomes = pandas.read_csv(path, sep=sep, dtype={customer: str}, encoding="utf-8-sig",
                                       **({"decimal": ",", "thousands": "."} if decimal_comma else {}))
        else:
            raise ValueError(f"outcomes {path}: expected a .csv, .tsv or .parquet file")
    elif not isinstance(outcomes, pandas.DataFrame):
        raise TypeError("outcomes must be a pandas DataFrame or the path of a CSV or Parquet "
                        f"file, not {type(outcomes).__name__}")
    client = _client(client)
    seg_id = segmentation.id if hasattr(segmentation, "id") else str(segmentation)
    missing = [c for c in (customer, converted, revenue) if c is not None and c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcomes have no column(s) {missing}; they have {list(outcomes.columns)}")
    money = None
    if revenue is not None:
        try:
            money = pandas.to_numeric(outcomes[revenue]).fillna(0.0).astype(float).tolist()
        except (TypeError, ValueError):
            values = outcomes[revenue].tolist()
            row = next(i for i, v in enumerate(values)
                       if not (_is_number(v) or pandas.isna(v)))
            hint = ("pass decimal_comma=True" if not decimal_comma and _is_number(
                str(values[row]).replace(".", "").replace(",", "."))
                else "convert currency text to numbers first")
            raise ValueError(f"outcomes column {revenue!r}, row {row + 1}: {values[row]!r} is not a "
                             f"number ({hint})") from None
    report = client.uplift(seg_id, outcomes[customer].astype(str).tolist(),
                           outcomes[converted].tolist(), money)
    rows = []
    for u in list(report.segments) + [report.overall]:
        relative = _interval(u, "conversion_relative")
        rows.append({
            "segment": u.stratum, "treated": u.treatment.customers, "control": u.control.customers,
            "conversion_treated": u.treatment.conversion_rate,
            "conversion_control": u.control.conversion_rate,
            "uplift": u.conversion.estimate, "uplift_low": u.conversion.low,
            "uplift_high": u.conversion.high, "p_value": u.conversion_p_value,
            "relative_uplift": relative.estimate if relative else float("nan"),
            # No revenue sent: not measured, not "no effect".
            **({"revenue_treated": u.treatment.revenue_per_customer,
                "revenue_control": u.control.revenue_per_customer,
                "revenue_uplift": u.revenue.estimate, "revenue_uplift_low": u.revenue.low,
                "revenue_uplift_high": u.revenue.high, "revenue_p_value": u.revenue_p_value}
               if money is not None else
               dict.fromkeys(("revenue_treated", "revenue_control", "revenue_uplift",
                              "revenue_uplift_low", "revenue_uplift_high", "revenue_p_value"),
                             float("nan"))),
            "warning": u.warning,
        })
    return UpliftResult(report=report, table=pandas.DataFrame(rows))
