"""``segmenta.segment``: the customer workflow from Python.

A transaction log (a pandas DataFrame, a local CSV/Parquet path, or the
file's bytes) goes in; the customers with their features and segment, the
segment profiles and the choice of k come back as pandas DataFrames.
"""
from __future__ import annotations

import io
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Union

from .client import Client
from .errors import JobFailed, SegmentaError
from .estimators import _client
from .v1 import segmenta_pb2 as pb

__all__ = ["segment", "SegmentResult"]

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


def _read_customers(client: Client, seg: pb.Segmentation):
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
            progress: bool = False) -> SegmentResult:
    """Segments customers from a transaction log on a Segmenta server.

    ``customer``/``date``/``amount``/``quantity``/``order`` name the log's
    columns (defaults ``customer_id``, ``date``, ``amount``). ``k`` fixes the
    number of segments; otherwise ``k_range`` (default 3..8) is swept and the
    recommended k used. ``previous`` refreshes a earlier run (its segment
    ids are kept). ``artifacts``: ``"all"`` or names to download (also
    written under ``artifacts_dir`` when given).

    The uploaded log and the run stay on the server (a later refresh needs
    them) until ``result.delete()``; when the job fails, the log is deleted
    (with an admin key; otherwise a warning names it).
    """
    _pandas()  # before any upload: the results come back as DataFrames
    client = _client(client)
    data, name = _log_bytes(transactions, name)
    log = client.upload_transactions(data, name=name, delimiter=delimiter,
                                     decimal_comma=decimal_comma, date_format=date_format,
                                     progress=progress)
    roles = {"customer": customer, "date": date, "amount": amount, "quantity": quantity,
             "order": order}
    job = client.start_segment(
        transactions_id=log.id, k=k, k_range=k_range, as_of=as_of, previous=previous,
        columns={r: c for r, c in roles.items() if c}, reject_bad_rows=reject_bad_rows,
        max_bad_rows=max_bad_rows, features=features, min_share=min_share, seed=seed,
        n_init=n_init, backend=backend)
    try:
        seg = client.wait(job, progress=progress).segmentation
    except JobFailed:
        # Nothing came of the log: it does not stay on the server.
        try:
            client.delete_transactions(log.id, cascade=True)
        except SegmentaError as e:
            warnings.warn(f"the uploaded log stays on the server as {log.id}: {e}", stacklevel=2)
        raise
    wanted = list(seg.artifacts) if artifacts == ARTIFACTS_ALL else list(artifacts or ())
    if artifacts_dir is not None and not wanted:
        wanted = list(seg.artifacts)
    unknown = [a for a in wanted if a not in seg.artifacts]
    if unknown:
        raise ValueError(f"no artifact(s) {unknown}; this run has {list(seg.artifacts)}")
    files = {}
    for artifact in wanted:
        path = pathlib.Path(artifacts_dir) / artifact if artifacts_dir is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        files[artifact] = client.download_artifact(seg.id, artifact, path)
    return SegmentResult(segmentation=seg, customers=_read_customers(client, seg),
                         segments=_profiles(seg), k_sweep=_sweep(seg), transactions_id=log.id,
                         artifacts=files, _client=client)
