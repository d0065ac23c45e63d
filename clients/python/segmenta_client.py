"""A Segmenta client in Python, generated from proto/ with grpcio-tools.

Runs the whole round trip: upload -> fit (watching progress) -> assign ->
evaluate -> PCA -> transform -> list (page by page); then the customer
workflow: upload a transaction log -> segment -> download the report; then
delete (cascading from the dataset and the log to what was made from them).

Install the requirements into a virtual environment (not system-wide), then
run it with that environment's Python:

    python3 -m venv .venv && .venv/bin/pip install -r clients/python/requirements.txt
    .venv/bin/python clients/python/segmenta_client.py --server 127.0.0.1:50051

Against a server with API keys and TLS (`serve --auth-keys --tls-cert
--tls-key`, and `--tls-client-ca` for mutual TLS):

    .venv/bin/python clients/python/segmenta_client.py --server HOST:PORT \\
        --token KEY --ca-cert ca.pem [--client-cert client.pem --client-key client.key]

The key (`--token`, default the SEGMENTA_TOKEN environment variable) is sent
on every call as `authorization: Bearer KEY`: with TLS as gRPC call
credentials, without TLS (a loopback test server) by a client interceptor.
`--ca-cert` switches to TLS, trusting that CA; `--server-name` checks the
server's certificate for that name instead of the host in `--server`.

The stubs are generated into a temporary folder at start-up, so the only
input is the .proto file. `load_stubs` and `connect` are reused by the other
scripts in this folder.
"""
import argparse
import collections
import datetime
import importlib
import os
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


# ---------------------------------------------------------------- connection

class _CallDetails(
        collections.namedtuple(
            "_CallDetails",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class BearerInterceptor(grpc.UnaryUnaryClientInterceptor,
                        grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor,
                        grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call, of every kind.

    For plaintext channels, where grpcio refuses call credentials (TLS
    channels use grpc.access_token_call_credentials instead)."""

    def __init__(self, token):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"]
        metadata.append(self._header)
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def add_connection_args(parser):
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")
    parser.add_argument("--token", default=os.environ.get("SEGMENTA_TOKEN") or None,
                        help="API key, sent as `authorization: Bearer KEY` "
                             "(default: $SEGMENTA_TOKEN)")
    parser.add_argument("--ca-cert", metavar="PEM",
                        help="connect with TLS, trusting this CA certificate")
    parser.add_argument("--client-cert", metavar="PEM",
                        help="client certificate for mutual TLS (with --client-key)")
    parser.add_argument("--client-key", metavar="PEM",
                        help="the client certificate's private key")
    parser.add_argument("--server-name",
                        help="the name the server's TLS certificate must carry "
                             "(default: the host in --server)")


def check_connection_args(parser, args):
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")
    if args.client_cert and not args.ca_cert:
        parser.error("--client-cert needs --ca-cert (mutual TLS is TLS)")
    if args.server_name and not args.ca_cert:
        parser.error("--server-name needs --ca-cert")


def connect(server, token=None, ca_cert=None, client_cert=None, client_key=None,
            server_name=None, options=()):
    """A channel to `server`: TLS when `ca_cert` is given (mutual TLS with
    `client_cert` and `client_key`); every call carries `token` if given."""
    options = list(options)
    if ca_cert is None:
        channel = grpc.insecure_channel(server, options=options)
        if token:
            channel = grpc.intercept_channel(channel, BearerInterceptor(token))
        return channel

    def read(path):
        return pathlib.Path(path).read_bytes()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca_cert),
        private_key=read(client_key) if client_key else None,
        certificate_chain=read(client_cert) if client_cert else None)
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(server, credentials, options=options)


def connect_from_args(args, **kwargs):
    return connect(args.server, token=args.token, ca_cert=args.ca_cert,
                   client_cert=args.client_cert, client_key=args.client_key,
                   server_name=args.server_name, **kwargs)


def list_all(call, request_type, field, page_size=0):
    """Every item of a paged List call, following next_page_token."""
    token = ""
    while True:
        page = call(request_type(page_size=page_size, page_token=token))
        yield from getattr(page, field)
        token = page.next_page_token
        if not token:
            return


# ---------------------------------------------------------------- data

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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_connection_args(parser)
    args = parser.parse_args()
    check_connection_args(parser, args)
    pb, rpc = load_stubs()
    channel = connect_from_args(args)
    info = rpc.ServerStub(channel).GetInfo(pb.GetInfoRequest())
    print(f"server {info.version}: tls={info.tls} auth_required={info.auth_required} "
          f"backends={list(info.backends)}")
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

    # Lists come in pages: follow next_page_token (small pages, to show it).
    listed = [d.id for d in list_all(datasets.List, pb.ListDatasetsRequest, "datasets", page_size=1)]
    assert dataset.id in listed, listed
    listed = [m.kmeans.id or m.pca.id
              for m in list_all(models.List, pb.ListModelsRequest, "models", page_size=1)]
    assert model.id in listed and pca.id in listed, listed
    print(f"listed: {len(listed)} model(s)")

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

    # A dataset with models refuses a plain delete (FAILED_PRECONDITION);
    # with cascade its models go too. Likewise a log and its segmentations.
    deleted = list(models.Delete(pb.DeleteModelRequest(id=model.id)).deleted_ids)
    assert deleted == [model.id], deleted
    try:
        datasets.Delete(pb.DeleteDatasetRequest(id=dataset.id))
        sys.exit("a dataset with a model was deleted without cascade")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
    cascaded = datasets.Delete(pb.DeleteDatasetRequest(id=dataset.id, cascade=True)).deleted_ids
    assert dataset.id in cascaded and pca.id in cascaded, cascaded
    deleted += cascaded
    cascaded = segmentations.DeleteTransactions(
        pb.DeleteTransactionsRequest(id=uploaded.id, cascade=True)).deleted_ids
    assert uploaded.id in cascaded and seg.id in cascaded, cascaded
    deleted += cascaded
    print(f"deleted: {', '.join(deleted)}")
    print("round trip ok")


if __name__ == "__main__":
    main()
