"""Errors the package raises: every server error is a :class:`SegmentaError`
carrying the gRPC status code and the server's message."""
from __future__ import annotations

import re

import grpc


class SegmentaError(Exception):
    """A call the server refused or that failed.

    ``code`` is the :class:`grpc.StatusCode`; ``message`` the server's text,
    which names what was wrong (a column, a row, a limit)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(SegmentaError, ValueError):
    """Bad input: wrong shape, NaN, an unknown column, a bad option."""


class NotFound(SegmentaError, KeyError):
    """No dataset, model, job or segmentation with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class FailedPrecondition(SegmentaError):
    """The object is in a state that refuses the call (e.g. a dataset with models)."""


class PermissionDenied(SegmentaError, PermissionError):
    """The key's role does not allow the call, or server paths are off."""


class Unauthenticated(SegmentaError, PermissionError):
    """No key, or a key the server does not know."""


class ResourceExhausted(SegmentaError):
    """A server limit (message size, rows, work, queue) was reached: the message names it."""


class Unavailable(SegmentaError, ConnectionError):
    """The server cannot be reached (down, wrong address, TLS mismatch)."""


class DeadlineExceeded(SegmentaError, TimeoutError):
    """The call took longer than its timeout."""


class JobFailed(SegmentaError):
    """A server job (fit, import, segment) ended failed or cancelled.

    ``job`` is the finished :class:`segmenta.v1.segmenta_pb2.Job`; ``code``
    is the failure's gRPC code as the server recorded it (``INVALID_ARGUMENT``:
    the input will never work; ``RESOURCE_EXHAUSTED``: a limit; ...)."""

    def __init__(self, job, message: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED):
        super().__init__(code, message)
        self.job = job


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


# The server words its advice as the command line does; here it is said
# with this package's arguments.
_IN_PYTHON = (
    (re.compile(r"--(date-format|delimiter|max-bad-rows) ('[^']*'|[^\s)]+?)(?=[:,;.]?(?:\s|\)|$))"),
     lambda m: f"{m.group(1).replace('-', '_')}={_quoted(m.group(2))}"),
    (re.compile(r"--decimal-comma"), lambda m: "decimal_comma=True"),
    (re.compile(r"--(max-bad-rows|min-share|date-format|delimiter)"),
     lambda m: m.group(1).replace("-", "_")),
    (re.compile(r"segment --holdout-share"), lambda m: "segment(..., holdout_share=...)"),
    (re.compile(r"(no )?--order-col; "), lambda m: ""),
)


def _quoted(value: str) -> str:
    """A value as a Python literal: numbers as they are, text quoted."""
    value = value.strip("'")
    try:
        float(value)
        return value
    except ValueError:
        return repr(value)


def in_python(message: str) -> str:
    """``message`` with command-line flags said as this package's arguments."""
    for pattern, replace in _IN_PYTHON:
        message = pattern.sub(replace, message)
    return message


def from_rpc_error(error: grpc.RpcError) -> SegmentaError:
    """The package's exception for a failed gRPC call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    return _BY_CODE.get(code, SegmentaError)(code, in_python(message or ""))
