"""scikit-learn-style estimators backed by a Segmenta server.

The server comes from ``client=`` (a :class:`segmenta.Client` or an address),
else ``$SEGMENTA_SERVER`` (with the key from ``$SEGMENTA_TOKEN``). ``fit``
uploads the rows, fits on the server and, unless ``keep_data=True``, deletes
the uploaded rows again, keeping only the model: no customer data stays on
the server after a fit.
"""
from __future__ import annotations

import inspect
import os
import warnings
from typing import Optional, Union

import numpy as np

from . import _arrays
from .client import Client
from .errors import NotFound, PermissionDenied, SegmentaError

try:  # scikit-learn's base classes when it is installed: clone, Pipeline, tags
    from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class BaseEstimator:
        """get_params/set_params as scikit-learn defines them."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values()
                          if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep=True):
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}")
                setattr(self, key, value)
            return self

        def __repr__(self):
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class ClusterMixin:
        _estimator_type = "clusterer"

        def fit_predict(self, X, y=None, **kwargs):
            self.fit(X, **kwargs)
            return self.labels_

    class TransformerMixin:
        def fit_transform(self, X, y=None, **kwargs):
            return self.fit(X, **kwargs).transform(X)

__all__ = ["KMeans", "PCA"]


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit``."""


# Clients made from an address (or $SEGMENTA_SERVER), one per address and
# key, shared by every estimator that names them: no channel per clone.
_SHARED: dict = {}


def _client(client: Union[None, str, Client]) -> Client:
    if isinstance(client, Client):
        return client
    address = client or os.environ.get("SEGMENTA_SERVER")
    key = (address, os.environ.get("SEGMENTA_TOKEN"))
    if key not in _SHARED:
        _SHARED[key] = Client(address)
    return _SHARED[key]


class _ServerEstimator(BaseEstimator):
    """Shared by KMeans and PCA: the connection, the upload and the clean-up."""

    def _connect(self) -> Client:
        return _client(self.client)

    def _check_fitted(self):
        if not hasattr(self, "model_id_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def _check_width(self, X) -> np.ndarray:
        matrix = _arrays.as_matrix(X)
        if matrix.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {matrix.shape[1]} features, but {type(self).__name__} "
                             f"was fitted with {self.n_features_in_}")
        return matrix

    def _set_features(self, X, matrix: np.ndarray):
        """Records the fitted width and names (only once a fit succeeded)."""
        self.n_features_in_ = matrix.shape[1]
        names = _arrays.column_names(X)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _fit_on_server(self, client: Client, X, matrix: np.ndarray,
                       weights: Optional[np.ndarray], fit):
        """Uploads ``matrix`` (``X`` converted) and the weights, runs
        ``fit(dataset_id, columns)`` on the server, keeps only the model
        (unless ``keep_data``) and records the fitted features. Returns the
        fitted model message."""
        columns = [f"x{j}" for j in range(matrix.shape[1])]
        upload, upload_columns = matrix, columns
        if weights is not None:
            upload = np.column_stack([matrix, weights]).astype(np.float32)
            upload_columns = [*columns, "sample_weight"]
        dataset = client.upload(upload, name=f"sklearn-{type(self).__name__.lower()}",
                                columns=upload_columns, progress=self.progress)
        try:
            model = fit(dataset.id, columns)
            self.model_id_ = self._keep_only_model(client, dataset.id, model.id)
        except BaseException:
            if not self.keep_data:
                _delete_quietly(client, dataset.id)
            raise
        if self.keep_data:
            self.dataset_id_ = dataset.id
        self._set_features(X, matrix)
        return model

    def _keep_only_model(self, client: Client, dataset_id: str, model_id: str) -> str:
        """Re-registers the model on its own (no link to the rows) and deletes
        the uploaded rows with the original model."""
        if self.keep_data:
            return model_id
        content = client.export_model(model_id)
        try:
            client.delete_dataset(dataset_id, cascade=True)
        except PermissionDenied:
            warnings.warn(f"the uploaded rows stay on the server as dataset {dataset_id}: deleting "
                          "needs an admin key (pass keep_data=True to keep them on purpose)",
                          stacklevel=3)
            return model_id
        model = client.import_model(content)
        return model.kmeans.id or model.pca.id



class KMeans(ClusterMixin, _ServerEstimator):
    """k-means on a Segmenta server, with scikit-learn's interface.

    ``init``: ``"k-means++"``, ``"k-means||"``, ``"random"`` or an
    ``n_clusters × n_features`` array. ``tol`` is relative to the data's
    mean variance, as scikit-learn's. ``backend``: ``"gpu"``, ``"cpu"``,
    ``"auto"`` or ``None`` (the server's default).

    Fitted attributes: ``cluster_centers_``, ``labels_``, ``inertia_``,
    ``n_iter_``, ``n_features_in_``, ``model_id_`` (the server's model).
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init="auto",
                 max_iter: int = 300, tol: float = 1e-4, random_state: Optional[int] = None,
                 backend: Optional[str] = None, client=None, keep_data: bool = False,
                 progress: bool = False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.backend = backend
        self.client = client
        self.keep_data = keep_data
        self.progress = progress

    def fit(self, X, y=None, sample_weight=None):
        """Fits on ``X`` (rows × features), optionally weighting rows."""
        client = self._connect()
        if isinstance(self.random_state, np.random.RandomState):
            seed = int(self.random_state.randint(0, 2**31 - 1))
        elif self.random_state is None:  # as scikit-learn: a fresh seed each fit
            seed = int(np.random.SeedSequence().entropy % 2**63)
        else:
            seed = int(self.random_state)
        if self.n_init == "auto":  # scikit-learn's rule
            n_init = 10 if isinstance(self.init, str) and self.init == "random" else 1
        else:
            n_init = int(self.n_init)
        matrix = _arrays.as_matrix(X)
        weights = _arrays.as_weights(sample_weight, matrix.shape[0])
        model = self._fit_on_server(client, X, matrix, weights, lambda dataset_id, columns: (
            client.fit_kmeans(
                dataset_id, self.n_clusters, columns=columns, init=self.init, n_init=n_init,
                max_iter=self.max_iter, tol=self.tol, seed=seed, backend=self.backend,
                weights_column="sample_weight" if weights is not None else "",
                progress=self.progress)))
        d = self.n_features_in_
        self.cluster_centers_ = np.asarray(model.centroids, dtype=np.float64).reshape(-1, d)
        self.n_iter_ = int(model.n_iter)
        self.converged_ = bool(model.converged)
        self.backend_ = model.backend
        assignment = client.assign(self.model_id_, matrix)
        self.labels_ = assignment.labels.astype(np.int32)
        self.inertia_ = _weighted_sum(assignment.distances, weights)
        return self

    def predict(self, X, sample_weight=None):
        """The nearest centre's index per row."""
        self._check_fitted()
        return self._connect().assign(self.model_id_, self._check_width(X)).labels.astype(np.int32)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).labels_

    def transform(self, X):
        """Euclidean distances to every centre: rows × n_clusters."""
        self._check_fitted()
        matrix = self._check_width(X).astype(np.float64)
        c = self.cluster_centers_
        sq = (matrix**2).sum(1)[:, None] - 2 * matrix @ c.T + (c**2).sum(1)[None, :]
        return np.sqrt(np.maximum(sq, 0.0))

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None):
        """The opposite of the inertia of ``X`` (higher is better)."""
        self._check_fitted()
        matrix = self._check_width(X)
        weights = _arrays.as_weights(sample_weight, matrix.shape[0])
        return -_weighted_sum(self._connect().assign(self.model_id_, matrix).distances, weights)


class PCA(TransformerMixin, _ServerEstimator):
    """PCA on a Segmenta server, with scikit-learn's interface.

    Fitted attributes: ``components_``, ``explained_variance_``,
    ``explained_variance_ratio_``, ``singular_values_``, ``mean_``,
    ``n_components_``, ``n_features_in_``, ``model_id_``.
    """

    def __init__(self, n_components: Optional[int] = None, *, whiten: bool = False,
                 backend: Optional[str] = None, client=None, keep_data: bool = False,
                 progress: bool = False):
        self.n_components = n_components
        self.whiten = whiten
        self.backend = backend
        self.client = client
        self.keep_data = keep_data
        self.progress = progress

    def fit(self, X, y=None):
        client = self._connect()
        matrix = _arrays.as_matrix(X)
        n_components = self.n_components
        if n_components is None:
            n_components = min(matrix.shape)
        if not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer or None, got {self.n_components!r}")
        model = self._fit_on_server(client, X, matrix, None, lambda dataset_id, columns: (
            client.fit_pca(dataset_id, int(n_components), columns=columns, whiten=self.whiten,
                           backend=self.backend, progress=self.progress)))
        d = self.n_features_in_
        self.n_components_ = int(model.n_components)
        self.components_ = np.asarray(model.components, dtype=np.float64).reshape(-1, d)
        self.explained_variance_ = np.asarray(model.explained_variance, dtype=np.float64)
        self.explained_variance_ratio_ = np.asarray(model.explained_variance_ratio, dtype=np.float64)
        self.singular_values_ = np.asarray(model.singular_values, dtype=np.float64)
        self.mean_ = np.asarray(model.mean, dtype=np.float64)
        self.backend_ = model.backend
        return self

    def transform(self, X):
        """Rows projected onto the components (whitened when ``whiten``)."""
        self._check_fitted()
        return self._connect().transform(self.model_id_, self._check_width(X)).astype(np.float64)

    def inverse_transform(self, X):
        """Components back to the original features."""
        self._check_fitted()
        Y = _arrays.as_matrix(X, "X")
        if Y.shape[1] != self.n_components_:
            raise ValueError(f"X has {Y.shape[1]} components, but PCA has {self.n_components_}")
        return self._connect().inverse_transform(self.model_id_, Y).astype(np.float64)


def _weighted_sum(distances: np.ndarray, weights: Optional[np.ndarray]) -> float:
    d = distances.astype(np.float64)
    return float(d.sum() if weights is None else (d * weights.astype(np.float64)).sum())


def _delete_quietly(client: Client, dataset_id: str):
    """Best-effort clean-up after a failed fit: the fit's error is the one to raise."""
    try:
        client.delete_dataset(dataset_id, cascade=True)
    except NotFound:  # already deleted (the failure came after the clean-up)
        pass
    except SegmentaError as e:
        warnings.warn(f"could not delete the uploaded rows (dataset {dataset_id}): {e}", stacklevel=3)
