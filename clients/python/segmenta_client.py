"""A Segmenta client in Python, generated from proto/ with grpcio-tools.

Runs the whole round trip: upload -> fit (watching progress) -> assign ->
evaluate -> PCA -> transform; then the customer workflow: upload a
transaction log -> segment -> download the report; then delete.

    pip install -r clients/python/requirements.txt
    python3 clients/python/segmenta_client.py --server 127.0.0.1:50051

The stubs are generated into a temporary folder at start-up, so the only
input is the .proto file.
"""
import argparse
import datetime
import importlib
import pathlib
import random
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_stubs():
    out = tempfile.mkdtemp(prefix="segmenta-py-")
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    code = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "proto/segmenta/v1/segmenta.proto"),
    ])
    if code != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("segmenta.v1.segmenta_pb2"),
            importlib.import_module("segmenta.v1.segmenta_pb2_grpc"))


def blobs(n, seed=5):
    """Three groups of customers: (recency, frequency, spend)."""
    rng = random.Random(seed)
    centres = [(10, 20, 900), (60, 5, 150), (300, 1, 40)]
    rows = []
    for i in range(n):
        c = centres[i % 3]
        rows.append([rng.gauss(c[0], 3), rng.gauss(c[1], 1), rng.gauss(c[2], 20)])
    return rows


def transactions(n, seed=3):
    """A CSV transaction log: frequent big spenders, occasional buyers, lapsed."""
    rng = random.Random(seed)
    end = datetime.date(2025, 12, 31)
    lines = ["customer_id,date,amount"]
    for i in range(n):
        kind = i % 3
        orders, gap, start, spend = [(20, 12, 5, 150.0), (4, 60, 20, 40.0), (2, 30, 400, 25.0)][kind]
        for j in range(orders):
            day = end - datetime.timedelta(days=start + j * gap + rng.randrange(3))
            lines.append(f"C{i:05d},{day.isoformat()},{rng.uniform(0.8, 1.2) * spend:.2f}")
    return ("\n".join(lines) + "\n").encode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="127.0.0.1:50051")
    args = parser.parse_args()
    pb, rpc = load_stubs()
    channel = grpc.insecure_channel(args.server)
    datasets = rpc.DatasetsStub(channel)
    jobs = rpc.JobsStub(channel)
    clustering = rpc.ClusteringStub(channel)
    decomposition = rpc.DecompositionStub(channel)
    models = rpc.ModelsStub(channel)
    segmentations = rpc.SegmentationsStub(channel)

    rows = blobs(3000)
    columns = ["recency", "frequency", "spend"]

    def upload_messages():
        yield pb.UploadRequest(header=pb.UploadHeader(name="py-customers", columns=columns))
        for start in range(0, len(rows), 1000):
            flat = [v for row in rows[start:start + 1000] for v in row]
            yield pb.UploadRequest(rows=pb.RowBlock(values=flat))

    dataset = datasets.Upload(upload_messages())
    print(f"uploaded {dataset.n_rows} rows as {dataset.id}")

    def wait(job):
        for event in jobs.WatchJob(pb.WatchJobRequest(id=job.id)):
            if event.HasField("progress"):
                p = event.progress
                print(f"  {p.phase} iteration {p.iteration} inertia {p.inertia:.4g}")
            else:
                finished = event.finished
                if finished.state != pb.JOB_STATE_SUCCEEDED:
                    sys.exit(f"job failed: {finished.error}")
                return finished
        sys.exit("watch ended early")

    job = clustering.FitKMeans(pb.FitKMeansRequest(
        dataset_id=dataset.id, k=3, standardize=True, seed=1, backend=pb.BACKEND_CPU))
    model = wait(job).kmeans
    print(f"model {model.id}: k={model.k} inertia={model.inertia:.4f} sizes={list(model.cluster_sizes)}")
    assert sorted(model.cluster_sizes) == [1000, 1000, 1000], model.cluster_sizes

    probe = [v for row in rows[:6] for v in row]
    assigned = clustering.Assign(pb.AssignRequest(model_id=model.id, rows=probe))
    print(f"labels of the first 6 rows: {list(assigned.labels)}")
    assert assigned.labels[0] == assigned.labels[3] and assigned.labels[0] != assigned.labels[1]

    quality = clustering.Evaluate(pb.EvaluateRequest(model_id=model.id, dataset_id=dataset.id, silhouette_sample_size=1000))
    print(f"silhouette {quality.silhouette:.3f}, Davies-Bouldin {quality.davies_bouldin:.3f}")
    assert quality.silhouette > 0.5

    pca = wait(decomposition.FitPca(pb.FitPcaRequest(dataset_id=dataset.id, n_components=2))).pca
    projected = decomposition.Transform(pb.TransformRequest(model_id=pca.id, rows=probe))
    assert len(projected.values) == 6 * 2
    print(f"PCA explained variance ratio: {[round(r, 4) for r in pca.explained_variance_ratio]}")

    try:
        clustering.Assign(pb.AssignRequest(model_id=model.id, rows=[1.0, 2.0]))
        sys.exit("a row of the wrong width was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print(f"bad input rejected: {e.code().name}: {e.details()}")

    # The customer workflow: a transaction log in, segments and a report out.
    log = transactions(600)

    def log_messages():
        yield pb.UploadTransactionsRequest(header=pb.TransactionsHeader(name="py-log.csv", format=pb.FILE_FORMAT_CSV))
        for start in range(0, len(log), 64 * 1024):
            yield pb.UploadTransactionsRequest(chunk=log[start:start + 64 * 1024])

    uploaded = segmentations.UploadTransactions(log_messages())
    seg = wait(segmentations.Segment(pb.SegmentRequest(
        transactions_id=uploaded.id, k=3, backend=pb.BACKEND_CPU))).segmentation
    for s in seg.segments:
        print(f"segment {s.id}: {s.size} customers, {s.description}")
    assert seg.k == 3 and seg.n_customers == 600
    assert sorted(s.size for s in seg.segments) == [200, 200, 200], [s.size for s in seg.segments]
    report = b"".join(chunk.data for chunk in segmentations.DownloadArtifact(
        pb.DownloadArtifactRequest(segmentation_id=seg.id, name="report.html")))
    assert b"<h2>Segments</h2>" in report
    print(f"report.html downloaded ({len(report)} bytes); artifacts: {list(seg.artifacts)}")

    for model_id in (model.id, pca.id, seg.id):
        models.Delete(pb.DeleteModelRequest(id=model_id))
    datasets.Delete(pb.DeleteDatasetRequest(id=dataset.id))
    print("round trip ok")


if __name__ == "__main__":
    main()
