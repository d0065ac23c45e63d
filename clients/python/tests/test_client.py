"""segmenta.Client against real servers: the API in Python terms, chunked
uploads and assigns, paging, and errors as exceptions with status codes."""
import io
import pathlib
import socket

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import segmenta
from conftest import KEYS, Server


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """Tight limits, so uploads and assigns must go in many messages."""
    s = Server(tmp_path_factory.mktemp("small"), "--max-message-bytes", "65536",
               "--max-assign-rows", "100")
    yield s
    s.stop()


def test_info_reports_the_server(client):
    info = client.info()
    assert info.version and "cpu" in info.backends
    assert client.limits.max_message_bytes > 0
    assert not info.auth_required and not info.tls


def test_uploads_and_assigns_go_in_chunks_within_the_limits(small_server, blobs):
    X, labels = blobs
    X = np.vstack([X] * 5)  # 3000 rows × 4: several upload messages at a 64 KiB limit
    with segmenta.Client(small_server.address) as c:
        assert c.limits.max_message_bytes == 65536
        ds = c.upload(X, name="chunked")
        assert (ds.n_rows, ds.n_cols, list(ds.columns)) == (3000, 4, ["x0", "x1", "x2", "x3"])
        model = c.fit_kmeans(ds.id, 3, seed=1, n_init=2)
        a = c.assign(model.id, X)  # 100 rows per call
        assert a.labels.shape == (3000,) and a.distances.shape == (3000,)
        assert (a.labels[:600] == a.labels[600:1200]).all()
        from sklearn.metrics import adjusted_rand_score
        assert adjusted_rand_score(labels, a.labels[:600]) > 0.99
        c.delete_dataset(ds.id, cascade=True)


def test_dataframes_and_arrow_tables_keep_their_column_names(client, blobs):
    X, _ = blobs
    frame = pd.DataFrame(X, columns=["recency", "frequency", "spend", "tenure"])
    ds = client.upload(frame, name="frame")
    assert list(ds.columns) == ["recency", "frequency", "spend", "tenure"]
    table = pa.Table.from_pandas(frame)
    ds2 = client.upload(table, name="table")
    assert list(ds2.columns) == list(ds.columns) and ds2.n_rows == 600
    model = client.fit_kmeans(ds.id, 3, columns=["recency", "spend"], seed=2)
    assert list(model.columns) == ["recency", "spend"]
    # Seeding on a sample of the rows, or on every row, finds the same blobs.
    default = client.fit_kmeans(ds.id, 3, seed=2)
    for sample in (100, "all"):
        again = client.fit_kmeans(ds.id, 3, seed=2, init_sample=sample)
        assert sorted(again.cluster_sizes) == sorted(default.cluster_sizes), sample
    assert client.assign(model.id, frame[["recency", "spend"]]).labels.shape == (600,)
    for d in (ds, ds2):
        client.delete_dataset(d.id, cascade=True)


def test_lists_follow_pages(client, blobs):
    X, _ = blobs
    made = [client.upload(X[:50], name=f"page-{i}").id for i in range(3)]
    listed = [d.id for d in client.list_datasets(page_size=1)]
    assert set(made) <= set(listed) and len(listed) == len(set(listed))
    for d in made:
        client.delete_dataset(d)


def test_pca_transform_and_inverse_round_trip(client, blobs):
    X, _ = blobs
    ds = client.upload(X)
    pca = client.fit_pca(ds.id, 4)
    Y = client.transform(pca.id, X[:20])
    np.testing.assert_allclose(client.inverse_transform(pca.id, Y), X[:20], atol=1e-3)
    client.delete_dataset(ds.id, cascade=True)


def test_models_export_and_import(client, blobs):
    X, _ = blobs
    ds = client.upload(X)
    model = client.fit_kmeans(ds.id, 3, seed=1)
    content = client.export_model(model.id)
    copy = client.import_model(content).kmeans
    assert copy.id != model.id and copy.k == 3
    assert (client.assign(copy.id, X).labels == client.assign(model.id, X).labels).all()
    assert model.id in [m.kmeans.id for m in client.list_models()]
    assert client.delete_model(copy.id) == [copy.id]
    client.delete_dataset(ds.id, cascade=True)


def test_streamed_assign_answers_each_batch_in_order(client, blobs):
    X, _ = blobs
    ds = client.upload(X)
    model = client.fit_kmeans(ds.id, 3, seed=1)
    whole = client.assign(model.id, X).labels
    parts = list(client.assign_stream(model.id, (X[i:i + 100] for i in range(0, 600, 100))))
    assert len(parts) == 6
    assert (np.concatenate([p.labels for p in parts]) == whole).all()
    client.delete_dataset(ds.id, cascade=True)


def test_errors_are_exceptions_with_the_status_code(client, blobs):
    X, _ = blobs
    with pytest.raises(segmenta.NotFound) as e:
        client.get_dataset("ds-does-not-exist")
    assert e.value.code.name == "NOT_FOUND" and "ds-does-not-exist"[:8] in e.value.message
    ds = client.upload(X)
    model = client.fit_kmeans(ds.id, 3, seed=1)
    with pytest.raises(segmenta.InvalidArgument, match="the rows have 3 features; the model has 4"):
        client.assign(model.id, X[:, :3])  # 1,800 values: whole rows of 4 too
    with pytest.raises(segmenta.FailedPrecondition, match=model.id):
        client.delete_dataset(ds.id)  # it has a model: cascade is needed
    with pytest.raises(ValueError, match="unknown backend"):
        client.fit_kmeans(ds.id, 3, backend="tpu")
    with pytest.raises(ValueError, match="init_sample must be"):
        client.fit_kmeans(ds.id, 3, init_sample="most")
    with pytest.raises(segmenta.InvalidArgument, match="sample of 2 rows cannot give k = 3"):
        client.fit_kmeans(ds.id, 3, init_sample=2)
    client.delete_dataset(ds.id, cascade=True)
    # A job that fails raises JobFailed with the server's reason.
    log = client.upload_transactions(b"customer_id,date,amount\nC1,not a date,3\n", name="bad.csv")
    assert log.id in [t.id for t in client.list_transactions()]
    with pytest.raises(segmenta.JobFailed, match="could be read") as failed:
        client.wait(client.start_segment(transactions_id=log.id, k=3))
    assert failed.value.job.state == segmenta.v1.segmenta_pb2.JOB_STATE_FAILED
    # The server's code for the failure: the log will never read.
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    client.delete_transactions(log.id, cascade=True)


def test_keys_roles_and_a_server_that_is_down(keyed_server, monkeypatch):
    with segmenta.Client(keyed_server.address, token="") as anonymous:
        with pytest.raises(segmenta.Unauthenticated):
            anonymous.list_datasets().__next__()
    role, key = KEYS["reader"]
    with segmenta.Client(keyed_server.address, token=key) as reader:
        assert reader.info().auth_required
        with pytest.raises(segmenta.PermissionDenied):
            reader.upload(np.ones((3, 2)))
    # The key from the environment, as the estimators use it.
    monkeypatch.setenv("SEGMENTA_TOKEN", KEYS["writer"][1])
    monkeypatch.setenv("SEGMENTA_SERVER", keyed_server.address)
    with pytest.warns(UserWarning, match="needs an admin key"):
        km = segmenta.KMeans(2, random_state=0).fit(np.array([[0.0, 0], [0, 1], [9, 9], [9, 8]]))
    assert sorted(np.bincount(km.labels_)) == [2, 2]
    # Nothing listens on a port we just closed: Unavailable, quickly.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with segmenta.Client(f"127.0.0.1:{port}", timeout=5) as down:
        with pytest.raises(segmenta.Unavailable):
            down.info()


def test_no_address_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SEGMENTA_SERVER", raising=False)
    with pytest.raises(ValueError, match="SEGMENTA_SERVER"):
        segmenta.Client()


def test_progress_bars_show_uploads_and_jobs(client, blobs, capsys):
    X, _ = blobs
    km = segmenta.KMeans(3, random_state=0, client=client, progress=True).fit(X)
    err = capsys.readouterr().err
    assert "upload" in err and "job" in err, err
    assert km.labels_.shape == (600,)


def test_partial_sums_of_cached_partitions_add_up_to_the_whole(client, blobs):
    X, _ = blobs
    w = np.linspace(0.5, 2.0, len(X))
    c = X[[0, 250, 500]]
    whole = client.partial_step(c, rows=X, weights=w)
    assert whole.n_rows == 600 and whole.weights.sum() == pytest.approx(w.sum(), rel=1e-6)
    parts = [(0, 1), (1, 333), (333, 600)]
    for i, (lo, hi) in enumerate(parts):
        p = client.put_partition("fit-a", i, X[lo:hi], w[lo:hi])
        assert (p.n_rows, p.n_features, p.replaced) == (hi - lo, 4, False)
    # A retried task uploads its partition again: replaced, not added.
    again = client.put_partition("fit-a", 1, X[1:333], w[1:333])
    assert again.replaced
    shares = [client.partial_step(c, partition=("fit-a", i)) for i in range(3)]
    np.testing.assert_allclose(sum(s.sums for s in shares), whole.sums, rtol=1e-9)
    np.testing.assert_allclose(sum(s.weights for s in shares), whole.weights, rtol=1e-9)
    assert sum(s.inertia for s in shares) == pytest.approx(whole.inertia, rel=1e-9)
    # Inline rows give the same share as the cached partition.
    inline = client.partial_step(c, rows=X[1:333], weights=w[1:333])
    np.testing.assert_array_equal(inline.sums, shares[1].sums)
    # k-means|| steps: cost, seeded sampling, candidate weights.
    cost = sum(client.partition_cost(c[:1], partition=("fit-a", i))[0] for i in range(3))
    total_cost, n, weight = client.partition_cost(c[:1], rows=X, weights=w)
    assert cost == pytest.approx(total_cost, rel=1e-9) and n == 600
    a = client.sample_by_cost(c[:1], 6.0, cost, seed=4, partition=("fit-a", 1))
    b = client.sample_by_cost(c[:1], 6.0, cost, seed=4, partition=("fit-a", 1))
    np.testing.assert_array_equal(a, b)
    assert a.shape[1] == 4 and 0 < len(a) < 60
    cw = sum(client.candidate_weights(c, partition=("fit-a", i)) for i in range(3))
    np.testing.assert_allclose(cw, whole.weights, rtol=1e-9)
    assert client.release_partitions("fit-a") == 3
    with pytest.raises(segmenta.NotFound, match="upload it again"):
        client.partial_step(c, partition=("fit-a", 0))


def test_partitions_expire_and_belong_to_their_caller(keyed_server):
    import time

    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    with segmenta.Client(keyed_server.address, token=KEYS["writer"][1]) as writer, \
            segmenta.Client(keyed_server.address, token=KEYS["other"][1]) as other, \
            segmenta.Client(keyed_server.address, token=KEYS["reader"][1]) as reader:
        writer.put_partition("shared-name", 0, X)
        assert writer.partial_step(X[:2], partition=("shared-name", 0)).n_rows == 6
        with pytest.raises(segmenta.NotFound):
            other.partial_step(X[:2], partition=("shared-name", 0))
        assert other.release_partitions("shared-name") == 0
        with pytest.raises(segmenta.PermissionDenied):
            reader.put_partition("mine", 0, X)
        writer.put_partition("short", 0, X, ttl_seconds=1)
        writer.partial_step(X[:2], partition=("short", 0))  # a use renews the TTL
        time.sleep(2.5)  # unused for longer than its TTL
        with pytest.raises(segmenta.NotFound, match="expired"):
            writer.partial_step(X[:2], partition=("short", 0))


def test_bad_partitions_are_refused_with_the_reason(client):
    X = np.ones((4, 3))
    with pytest.raises(segmenta.InvalidArgument, match="fit_id"):
        client.put_partition("../etc", 0, X)
    with pytest.raises(ValueError, match="4 values for 5 rows|sample_weight has 4"):
        client.put_partition("f", 0, np.ones((5, 3)), np.ones(4))
    with pytest.raises(segmenta.InvalidArgument, match="whole rows"):
        client.partial_step(np.ones((2, 2)), rows=X)  # centres of the wrong width
    with pytest.raises(segmenta.InvalidArgument, match="total_cost"):
        client.sample_by_cost(X[:1], 2.0, 0.0, 1, rows=X)
    model = client.create_kmeans(np.eye(3), columns=["a", "b", "c"], n_iter=4)
    assert (client.assign(model.id, np.eye(3) * 0.9).labels == [0, 1, 2]).all()
    with pytest.raises(segmenta.InvalidArgument, match="names for 3"):
        client.create_kmeans(np.eye(3), columns=["a"])
    # A model whose numbers would not read back is refused, not stored.
    with pytest.raises(segmenta.InvalidArgument, match="finite"):
        client.create_kmeans(np.eye(3), inertia=float("nan"))
    # A partition with no rows, and a call that returns rows from a dataset.
    from segmenta.v1 import segmenta_pb2 as pb
    from segmenta.v1 import segmenta_pb2_grpc as rpc

    stub = rpc.ClusteringStub(grpc.insecure_channel(client.address))
    header_only = iter([pb.PutPartitionRequest(header=pb.PartitionHeader(
        key=pb.PartitionKey(fit_id="f", index=0), n_features=3, n_rows=1))])
    with pytest.raises(grpc.RpcError) as e:  # the raw stub: the Client refuses empty input itself
        stub.PutPartition(header_only, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no rows" in e.value.details()
    # A header that does not say how many rows follow is refused: a
    # cancelled stream would otherwise be cached as if whole.
    undeclared = iter([pb.PutPartitionRequest(header=pb.PartitionHeader(
        key=pb.PartitionKey(fit_id="f", index=0), n_features=1)),
        pb.PutPartitionRequest(rows=pb.PartitionRows(values_f32le=np.ones(1, dtype="<f4").tobytes()))])
    with pytest.raises(grpc.RpcError) as e:
        stub.PutPartition(undeclared, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("header.n_rows: required"), e.value.details()
    with pytest.raises(segmenta.InvalidArgument, match="ttl_seconds"):
        client.put_partition("f", 0, X, ttl_seconds=10**6)


def test_a_pickled_estimator_keeps_its_connection(keyed_server):
    import pickle

    X = np.array([[0.0, 0], [0, 1], [9, 9], [9, 8]])
    client = segmenta.Client(keyed_server.address, token=KEYS["writer"][1])
    with pytest.warns(UserWarning, match="admin key"):
        km = segmenta.KMeans(2, random_state=0, client=client).fit(X)
    copy = pickle.loads(pickle.dumps(km))
    assert copy.client is not client and copy.client.address == client.address
    # The copy still authenticates: the key travelled with it.
    assert (copy.predict(X) == km.predict(X)).all()


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    """A small partition budget and a 1 s idle timeout."""
    s = Server(tmp_path_factory.mktemp("tight"), "--max-partition-cache-bytes", "300000",
               "--idle-timeout", "1s")
    yield s
    s.stop()


def test_steps_charge_working_memory_and_trickling_uploads_are_cut_off(tight_server):
    import time

    from segmenta.v1 import segmenta_pb2 as pb
    from segmenta.v1 import segmenta_pb2_grpc as rpc

    with segmenta.Client(tight_server.address) as c:
        X = np.ones((10_000, 2))
        c.put_partition("work", 0, X)  # 80 KB cached
        # A step over it needs 24 bytes a row more (240 KB): past the budget.
        with pytest.raises(segmenta.ResourceExhausted, match="working memory"):
            c.partial_step(X[:2], partition=("work", 0))
        c.release_partitions("work")
        c.put_partition("work", 0, X[:5_000])
        assert c.partial_step(X[:2], partition=("work", 0)).n_rows == 5_000

        def trickle():
            yield pb.PutPartitionRequest(header=pb.PartitionHeader(
                key=pb.PartitionKey(fit_id="slow", index=0), n_features=1, n_rows=8))
            for _ in range(8):  # 4 bytes every 0.4 s: never idle, far too slow
                time.sleep(0.4)
                yield pb.PutPartitionRequest(rows=pb.PartitionRows(
                    values_f32le=np.ones(1, dtype="<f4").tobytes()))

        stub = rpc.ClusteringStub(grpc.insecure_channel(tight_server.address))
        with pytest.raises(grpc.RpcError) as e:
            stub.PutPartition(trickle(), timeout=30)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
        assert "bytes/s" in e.value.details()

        # The same holds for dataset uploads, which share the upload slots.
        def trickle_rows():
            yield pb.UploadRequest(header=pb.UploadHeader(name="slow", columns=["a"], n_rows=8))
            for _ in range(8):
                time.sleep(0.4)
                yield pb.UploadRequest(rows=pb.RowBlock(values=[1.0]))

        datasets = rpc.DatasetsStub(grpc.insecure_channel(tight_server.address))
        with pytest.raises(grpc.RpcError) as e:
            datasets.Upload(trickle_rows(), timeout=30)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
        assert "bytes/s" in e.value.details()
        assert "slow" not in [d.name for d in c.list_datasets()], "nothing was stored"
