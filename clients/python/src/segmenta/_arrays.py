"""Turning numpy arrays, pandas DataFrames and pyarrow Tables into the
row-major float32 matrices the server takes."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np


def column_names(X) -> Optional[List[str]]:
    """The column names of a DataFrame or Table; ``None`` for plain arrays."""
    columns = getattr(X, "column_names", None)  # pyarrow (whose .columns are the arrays)
    if columns is None:
        columns = getattr(X, "columns", None)  # pandas
    if columns is None:
        return None
    return [str(c) for c in columns]


def as_matrix(X, what: str = "X") -> np.ndarray:
    """``X`` as a C-contiguous float32 matrix, rows × columns.

    Raises ``ValueError`` naming the first bad value (NaN or infinite) or a
    wrong shape: the server would refuse them too, after the upload."""
    names = column_names(X)
    if hasattr(X, "to_pandas") and hasattr(X, "column_names"):  # pyarrow Table / RecordBatch
        X = np.column_stack([_numeric(X.column(i).to_numpy(zero_copy_only=False), what, names[i])
                             for i in range(X.num_columns)]) if X.num_columns else np.empty((X.num_rows, 0))
    elif hasattr(X, "to_numpy") and hasattr(X, "columns"):  # pandas DataFrame
        try:
            X = X.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            # Slow, but only to name the column that is not numeric.
            for i in range(X.shape[1]):
                _numeric(X.iloc[:, i].to_numpy(dtype=object, na_value=np.nan), what, names[i])
            raise
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numeric: {e}") from None
    if array.ndim == 1:
        raise ValueError(f"{what} must be 2-dimensional (rows × features), got a 1-D array of "
                         f"{array.shape[0]} values; reshape it with .reshape(-1, 1) for one feature")
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-dimensional (rows × features), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{what} has no rows")
    if array.shape[1] == 0:
        raise ValueError(f"{what} has no columns")
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{what} has {int(bad.sum())} NaN or infinite value(s); the first is "
                         f"at row {row}, column {_shown(col, names)}: {array[row, col]}")
    big = np.abs(array) > np.finfo(np.float32).max
    if big.any():
        row, col = map(int, np.argwhere(big)[0])
        raise ValueError(f"{what} at row {row}, column {_shown(col, names)} ({array[row, col]}) "
                         "does not fit in float32")
    return np.ascontiguousarray(array, dtype=np.float32)


def _shown(col: int, names: Optional[List[str]]) -> str:
    """A column as a message names it: by name where it has one."""
    return f"{col} ({names[col]!r})" if names and col < len(names) else str(col)


def _numeric(values, what: str, name: str) -> np.ndarray:
    """One column as float64, or a ``ValueError`` naming the column and its
    first value that is not a number (an id or a category left in)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for row, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{what} column {name!r} is not numeric: row {row} holds {v!r}; "
                                 "leave it out, or encode it as numbers") from None
        raise


def as_weights(sample_weight, n_rows: int) -> Optional[np.ndarray]:
    """Sample weights as float32, one per row, finite and non-negative."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape[0] != n_rows:
        raise ValueError(f"sample_weight has {w.shape[0]} values for {n_rows} rows")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if not (w > 0).any():
        raise ValueError("sample_weight is zero for every row")
    return w.astype(np.float32)


def rows_per_message(n_cols: int, max_message_bytes: int) -> Tuple[int, int]:
    """How many rows go in one message: at most a quarter of the server's
    message limit (room for framing) and 4 MiB, and at least one row."""
    budget = min(max(max_message_bytes // 4, 4096), 4 << 20)
    return max(1, budget // (4 * max(n_cols, 1))), budget
