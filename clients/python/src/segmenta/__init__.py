"""Segmenta from Python: a client for the gRPC API, scikit-learn-style
``KMeans`` and ``PCA`` backed by a server, the customer workflow
(``segment``, ``clv``, ``uplift``), and k-means on Spark
(``segmenta.spark``).

>>> import segmenta                                        # doctest: +SKIP
>>> km = segmenta.KMeans(8, client="127.0.0.1:50051").fit(X)
>>> km.cluster_centers_.shape
(8, 32)
"""
from ._channel import Tls
from .client import Assignment, Client
from .errors import (DeadlineExceeded, FailedPrecondition, InvalidArgument, JobFailed, NotFound,
                     PermissionDenied, ResourceExhausted, SegmentaError, Unauthenticated,
                     Unavailable)
from .estimators import PCA, KMeans, NotFittedError
from .workflow import ClvResult, SegmentResult, UpliftResult, clv, segment, uplift

__version__ = "0.1.0"

__all__ = [
    "Client", "Tls", "Assignment", "KMeans", "PCA", "segment", "SegmentResult", "clv",
    "ClvResult", "uplift", "UpliftResult",
    "SegmentaError", "InvalidArgument", "NotFound", "FailedPrecondition", "PermissionDenied",
    "Unauthenticated", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "JobFailed",
    "NotFittedError",
]
