"""segmenta.spark.KMeans in a real local Spark (4 partitions) against real
segmenta servers.

Tolerances: the distributed fit and the single-node fit run the same Lloyd
iterations from the same centres; only the order in which float64 partial
sums are added differs, so their centroids agree to float32 rounding (1e-4
absolute on data of unit scale). Spark MLlib's own fit is a different
implementation (float64, its own init), so it is compared on inertia (1 %).
"""
import os
import socket

import numpy as np
import pytest

try:
    import pyspark  # noqa: F401
except ImportError:
    if os.environ.get("SEGMENTA_REQUIRE_SPARK") == "1":
        raise
    pytest.skip("SKIPPED LOUDLY: pyspark is not installed (scripts/test.sh installs it)",
                allow_module_level=True)

import segmenta
from segmenta.spark import KMeans, KMeansModel
from sklearn.metrics import adjusted_rand_score
from conftest import SPARK_PARTITIONS as PARTITIONS, Server, spark_session


@pytest.fixture(scope="module")
def spark():
    return spark_session()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers: tasks pick one by partition index."""
    started = [Server(tmp_path_factory.mktemp(f"spark{i}")) for i in range(2)]
    yield started
    for s in started:
        s.stop()


def planted(n=8000, d=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = (centres[labels] + rng.normal(size=(n, d))).astype(np.float32)
    return X, labels


def frame(spark, X, extra=None):
    import pandas as pd

    columns = {f"f{j}": X[:, j].astype(np.float64) for j in range(X.shape[1])}
    columns["id"] = np.arange(len(X))
    if extra:
        columns.update(extra)
    return spark.createDataFrame(pd.DataFrame(columns)).repartition(PARTITIONS, "id")


def test_distributed_fit_equals_the_single_node_fit_from_the_same_centres(spark, servers):
    X, _ = planted()
    df = frame(spark, X)
    cols = [f"f{j}" for j in range(5)]
    init = X[[0, 1, 2, 3]]
    model = KMeans(k=4, inputCols=cols, initMode=init, maxIter=100, tol=0.0,
                   servers=[s.address for s in servers]).fit(df)
    ordered = df.select(*cols).toPandas().to_numpy(dtype=np.float32)
    single = segmenta.KMeans(4, init=init, tol=0, max_iter=100, client=servers[0].address).fit(ordered)
    np.testing.assert_allclose(np.array(model.clusterCenters()), single.cluster_centers_, atol=1e-4)
    assert model.summary.numIter >= 2
    assert model.summary.trainingCost == pytest.approx(single.inertia_, rel=1e-5)
    # transform through Assign: the same labels as the single-node model's Assign.
    out = model.transform(df).select("id", "prediction").toPandas().sort_values("id")
    np.testing.assert_array_equal(out["prediction"].to_numpy(), single.predict(X))


def test_kmeans_parallel_recovers_planted_groups_and_is_close_to_mllib(spark, servers):
    from pyspark.ml.clustering import KMeans as MLlibKMeans
    from pyspark.ml.feature import VectorAssembler

    X, labels = planted(seed=3)
    df = VectorAssembler(inputCols=[f"f{j}" for j in range(5)], outputCol="features").transform(
        frame(spark, X, {"truth": labels})).cache()
    assert df.rdd.getNumPartitions() == PARTITIONS
    ours = KMeans(k=4, featuresCol="features", seed=11, maxIter=30,
                  servers=[s.address for s in servers]).fit(df)
    predicted = ours.transform(df).select("truth", "prediction").toPandas()
    assert adjusted_rand_score(predicted["truth"], predicted["prediction"]) >= 0.99
    mllib = MLlibKMeans(k=4, seed=11, maxIter=30).fit(df)
    assert ours.summary.trainingCost == pytest.approx(mllib.summary.trainingCost, rel=0.01)
    assert len(ours.clusterCenters()) == 4 and ours.clusterCenters()[0].shape == (5,)
    assert ours.summary.converged and ours.summary.numIter < 30


def test_weights_random_init_empty_partitions_and_save_load(spark, servers, tmp_path):
    X, labels = planted(n=2000, seed=5)
    w = np.where(labels == 0, 3.0, 1.0)
    df = frame(spark, X, {"w": w}).repartition(PARTITIONS * 2, "id")  # some partitions may be small
    df = df.union(df.limit(0))
    model = KMeans(k=4, inputCols=[f"f{j}" for j in range(5)], weightCol="w", initMode="random",
                   seed=2, maxIter=40, servers=[servers[0].address]).fit(df)
    assert sum(model.summary.clusterSizes) == pytest.approx(w.sum(), rel=1e-6)
    ref = segmenta.KMeans(4, init=np.array(model.clusterCenters()), max_iter=1,
                          client=servers[0].address).fit(X, sample_weight=w)
    np.testing.assert_allclose(ref.cluster_centers_, np.array(model.clusterCenters()), atol=1e-3)
    model.save(tmp_path / "model")
    loaded = KMeansModel.load(tmp_path / "model", servers=[servers[1].address])
    np.testing.assert_array_equal(np.array(loaded.clusterCenters()), np.array(model.clusterCenters()))
    a = model.transform(df).select("id", "prediction").toPandas().sort_values("id")
    b = loaded.transform(df).select("id", "prediction").toPandas().sort_values("id")
    np.testing.assert_array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())
    with pytest.raises(ValueError, match="local path"):
        model.save("hdfs://namenode/models/segments")
    with pytest.raises(ValueError, match="not a Segmenta Spark model"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "model.json").write_text("{}")
        KMeansModel.load(tmp_path / "bad")


def test_a_large_offset_keeps_its_precision_and_tol_zero_converges(spark, servers):
    # Epoch seconds: two groups 60 s apart around 1.7e9. In float32 as sent
    # (7 digits) they would be 128 s steps apart; taken off a point inside
    # the data first, they keep their precision.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 4000)
    t = 1_700_000_000 + labels * 60 + rng.normal(0, 5, len(labels))
    import pandas as pd
    df = spark.createDataFrame(pd.DataFrame({"t": t, "x": rng.normal(size=len(labels)),
                                             "truth": labels})).repartition(PARTITIONS).cache()
    model = KMeans(k=2, inputCols=["t", "x"], seed=1, tol=0.0, maxIter=50,
                   servers=[s.address for s in servers]).fit(df)
    predicted = model.transform(df).select("truth", "prediction").toPandas()
    assert adjusted_rand_score(predicted["truth"], predicted["prediction"]) == 1.0
    centres = sorted(c[0] for c in model.clusterCenters())
    assert centres[1] - centres[0] == pytest.approx(60, abs=1)
    # tol = 0: converged once the centres stop changing, not at maxIter.
    assert model.summary.converged and model.summary.numIter < 50
    # Checked on the driver, before any Spark job.
    with pytest.raises(ValueError, match="unknown backend"):
        KMeans(k=2, inputCols=["t"], backend="bogus", servers=[servers[0].address])
    with pytest.warns(UserWarning, match="tls.ca_cert: no such file on the driver"):
        KMeans(k=2, inputCols=["t"], tls=segmenta.Tls(ca_cert="/nonexistent/ca.pem"),
               servers=[servers[0].address])
    # A missing feature (null, or NaN, as pandas writes it) names its column.
    holes = spark.createDataFrame(pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "b": [1.0, 2.0, 3.0, 4.0]}))
    with pytest.raises(Exception, match="(null value in column 'a'|column 'a' at row 2)"):
        KMeans(k=2, inputCols=["a", "b"], servers=[servers[0].address]).fit(holes)


def test_a_server_that_is_down_fails_the_task_with_its_address(spark):
    X, _ = planted(n=400)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(Exception, match=f"segmenta server {dead}.*UNAVAILABLE"):
        KMeans(k=2, inputCols=[f"f{j}" for j in range(5)], servers=[dead]).fit(frame(spark, X))


def test_bad_columns_are_clear_errors(spark, servers):
    X, _ = planted(n=100)
    df = frame(spark, X)
    with pytest.raises(ValueError, match="not columns of the DataFrame"):
        KMeans(k=2, inputCols=["nope"], servers=[servers[0].address]).fit(df)
    with pytest.raises(ValueError, match="featuresCol 'features' is not a column"):
        KMeans(k=2, servers=[servers[0].address]).fit(df)
    with pytest.raises(ValueError, match="larger than the number of rows"):
        KMeans(k=500, inputCols=["f0"], servers=[servers[0].address]).fit(df)


def test_the_readme_example_runs_as_written(spark, servers, tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("## Scaling out"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/segmenta-spark-model", str(tmp_path / "model"))
    monkeypatch.setenv("SEGMENTA_SERVER", servers[0].address)
    namespace = {}
    exec(compile(code, "README.md (Scaling out)", "exec"), namespace)
    model, same = namespace["model"], namespace["same"]
    assert len(model.clusterCenters()) == 3 and model.summary.numIter >= 1
    np.testing.assert_array_equal(np.array(same.clusterCenters()), np.array(model.clusterCenters()))
    assert "prediction" in capsys.readouterr().out
