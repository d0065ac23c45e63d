"""segmenta.KMeans and segmenta.PCA against scikit-learn on the same data.

Tolerances: the server computes in float32 (distances, sums reduced in
f64), scikit-learn in float64; on the same float32-representable data and
the same initial centroids both run Lloyd to the same fixed point, so
inertia agrees to float32 rounding (1e-5 relative) and PCA components to
1e-4 (after the usual sign alignment: a component's sign is arbitrary).
"""
import numpy as np
import pytest
import sklearn.cluster
import sklearn.decomposition
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import segmenta


def data(n=2000, d=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    X = centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    return X.astype(np.float32).astype(np.float64)


def test_kmeans_matches_scikit_learn_from_the_same_initial_centroids(server):
    X = data()
    init = X[[0, 100, 200, 300, 400]]
    ours = segmenta.KMeans(5, init=init, tol=0, max_iter=100, client=server.address).fit(X)
    ref = sklearn.cluster.KMeans(5, init=init, n_init=1, tol=0, max_iter=100,
                                 algorithm="lloyd").fit(X)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-4)
    assert (ours.labels_ == ref.labels_).all()
    assert (ours.predict(X) == ref.predict(X)).all()
    np.testing.assert_allclose(ours.transform(X[:50]), ref.transform(X[:50]), rtol=1e-4, atol=1e-4)
    assert ours.score(X) == pytest.approx(ref.score(X), rel=1e-5)
    assert ours.n_iter_ >= 1 and ours.cluster_centers_.shape == (5, 6)


def test_kmeans_sample_weight_matches_scikit_learn(server):
    X = data(n=900, d=3, k=3, seed=1)
    w = np.random.default_rng(2).uniform(0.1, 3.0, size=len(X))
    init = X[[0, 1, 2]]
    ours = segmenta.KMeans(3, init=init, tol=0, client=server.address).fit(X, sample_weight=w)
    ref = sklearn.cluster.KMeans(3, init=init, n_init=1, tol=0, algorithm="lloyd").fit(X, sample_weight=w)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-5)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-4)


def test_kmeans_plus_plus_recovers_planted_groups(server, blobs):
    X, labels = blobs
    km = segmenta.KMeans(3, random_state=3, n_init=3, client=server.address)
    predicted = km.fit_predict(X)
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(labels, predicted) > 0.99


def test_pca_matches_scikit_learn(server):
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(1500, 5)) @ rng.normal(size=(5, 5))).astype(np.float32).astype(np.float64)
    for whiten in (False, True):
        ours = segmenta.PCA(3, whiten=whiten, client=server.address).fit(X)
        ref = sklearn.decomposition.PCA(3, whiten=whiten, svd_solver="full").fit(X)
        signs = np.sign((ours.components_ * ref.components_).sum(axis=1))
        np.testing.assert_allclose(ours.components_ * signs[:, None], ref.components_, atol=1e-4)
        np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
        np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4)
        np.testing.assert_allclose(ours.mean_, ref.mean_, atol=1e-4)
        Y = ours.transform(X[:100])
        np.testing.assert_allclose(Y * signs[None, :], ref.transform(X[:100]), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ours.inverse_transform(Y), ref.inverse_transform(ref.transform(X[:100])),
                                   rtol=1e-3, atol=1e-3)


def test_estimators_follow_scikit_learn_conventions(server, blobs):
    X, _ = blobs
    km = segmenta.KMeans(3, max_iter=50, client=server.address)
    assert km.get_params()["n_clusters"] == 3
    km.set_params(n_clusters=4)
    assert km.n_clusters == 4
    twin = clone(km)
    assert twin is not km and twin.get_params() == km.get_params()
    with pytest.raises(segmenta.NotFittedError):
        twin.predict(X)
    pipe = Pipeline([("scale", StandardScaler()), ("pca", segmenta.PCA(2, client=server.address)),
                     ("kmeans", segmenta.KMeans(3, random_state=0, n_init=2, client=server.address))])
    labels = pipe.fit_predict(X)
    assert labels.shape == (600,) and set(labels) == {0, 1, 2}
    assert (pipe.predict(X) == labels).all()


def test_a_fit_leaves_no_rows_on_the_server(server, client, blobs):
    X, _ = blobs
    before = {d.id for d in client.list_datasets()}
    km = segmenta.KMeans(3, client=client).fit(X)
    assert {d.id for d in client.list_datasets()} == before
    # The model outlives the rows: predict still works, and it is a real model.
    assert client.get_model(km.model_id_).kmeans.k == 3
    kept = segmenta.KMeans(3, client=client, keep_data=True).fit(X)
    assert kept.dataset_id_ in {d.id for d in client.list_datasets()}
    client.delete_dataset(kept.dataset_id_, cascade=True)


def test_bad_input_is_a_clear_error(server, blobs):
    X, _ = blobs
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="row 5, column 2"):
        segmenta.KMeans(3, client=server.address).fit(bad)
    with pytest.raises(ValueError, match="2-dimensional"):
        segmenta.KMeans(3, client=server.address).fit(X[:, 0])
    # A DataFrame's columns are named: a text column, and a NaN.
    import pandas as pd
    frame = pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])
    ids = frame.assign(f1=[f"cust{i}" for i in range(len(frame))])
    with pytest.raises(ValueError, match="column 'f1' is not numeric: row 0 holds 'cust0'"):
        segmenta.KMeans(3, client=server.address).fit(ids)
    with pytest.raises(ValueError, match=r"row 5, column 2 \('f2'\)"):
        segmenta.KMeans(3, client=server.address).fit(pd.DataFrame(bad, columns=frame.columns))
    # Nullable and boolean columns still read.
    flags = frame.assign(f0=(frame["f0"] > 0), f1=frame["f1"].astype("Float64"))
    assert segmenta.KMeans(3, client=server.address).fit(flags).cluster_centers_.shape[1] == X.shape[1]
    with pytest.raises(ValueError, match="unknown init"):
        segmenta.KMeans(3, init="kmeans", client=server.address).fit(X)
    km = segmenta.KMeans(3, client=server.address).fit(X)
    with pytest.raises(ValueError, match="3 features"):
        km.predict(X[:, :3])
    # The server's own checks arrive as exceptions with the status code.
    with pytest.raises(segmenta.InvalidArgument) as e:
        segmenta.KMeans(601, client=server.address).fit(X)
    assert e.value.code.name == "INVALID_ARGUMENT" and "601" in e.value.message
