"""A tour of Segmenta's API from Python, with the `segmenta` package.

upload -> fit (watching progress) -> assign -> evaluate -> PCA -> transform
-> list -> the customer workflow (a transaction log in, segments and a report
out) -> delete (cascading from the dataset and the log to what was made
from them). It checks what it gets and ends with "round trip ok".

    python3 -m venv .venv && .venv/bin/pip install './clients/python[pandas]'
    .venv/bin/python clients/python/examples/round_trip.py --server 127.0.0.1:50051

With API keys and TLS: `--token KEY` (default $SEGMENTA_TOKEN) and
`--ca-cert ca.pem` (plus `--client-cert`/`--client-key` for mutual TLS).
"""
import argparse
import datetime
import os
import random
import sys

import numpy as np

import segmenta


def blobs(n, seed=5):
    """Three groups of customers: (recency, frequency, spend)."""
    rng = np.random.default_rng(seed)
    centres = np.array([(10, 20, 900), (60, 5, 150), (300, 1, 40)], dtype=float)
    scale = np.array([3, 1, 20], dtype=float)
    return centres[np.arange(n) % 3] + rng.normal(size=(n, 3)) * scale


def transactions(n, seed=3):
    """A CSV transaction log: frequent big spenders, occasional buyers, lapsed."""
    rng = random.Random(seed)
    end = datetime.date(2025, 12, 31)
    lines = ["customer_id,date,amount"]
    for i in range(n):
        orders, gap, start, spend = [(20, 12, 5, 150.0), (4, 60, 20, 40.0), (2, 30, 400, 25.0)][i % 3]
        for j in range(orders):
            day = end - datetime.timedelta(days=start + j * gap + rng.randrange(3))
            lines.append(f"C{i:05d},{day.isoformat()},{rng.uniform(0.8, 1.2) * spend:.2f}")
    return ("\n".join(lines) + "\n").encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")
    parser.add_argument("--token", default=os.environ.get("SEGMENTA_TOKEN") or None)
    parser.add_argument("--ca-cert", metavar="PEM", help="connect with TLS, trusting this CA")
    parser.add_argument("--client-cert", metavar="PEM")
    parser.add_argument("--client-key", metavar="PEM")
    args = parser.parse_args()
    tls = segmenta.Tls(args.ca_cert, args.client_cert, args.client_key) if args.ca_cert else None
    client = segmenta.Client(args.server, token=args.token, tls=tls, timeout=60)

    info = client.info()
    print(f"server {info.version}: tls={info.tls} auth_required={info.auth_required} "
          f"backends={list(info.backends)}")

    rows = blobs(3000)
    dataset = client.upload(rows, name="py-customers", columns=["recency", "frequency", "spend"])
    print(f"uploaded {dataset.n_rows} rows as {dataset.id}")

    job = client.fit_kmeans(dataset.id, 3, standardize=True, seed=1, backend="cpu", wait=False)
    for event in client.watch_job(job.id):
        if event.HasField("progress"):
            p = event.progress
            print(f"  {p.phase} iteration {p.iteration} inertia {p.inertia:.4g}")
    model = client.wait(job).kmeans
    print(f"model {model.id}: k={model.k} inertia={model.inertia:.4f} sizes={list(model.cluster_sizes)}")
    assert sorted(model.cluster_sizes) == [1000, 1000, 1000], model.cluster_sizes

    labels = client.assign(model.id, rows[:6]).labels
    print(f"labels of the first 6 rows: {labels.tolist()}")
    assert labels[0] == labels[3] and labels[0] != labels[1]

    quality = client.evaluate(model.id, dataset.id, silhouette_sample_size=1000)
    print(f"silhouette {quality.silhouette:.3f}, Davies-Bouldin {quality.davies_bouldin:.3f}")
    assert quality.silhouette > 0.5

    pca = client.fit_pca(dataset.id, 2)
    assert client.transform(pca.id, rows[:6]).shape == (6, 2)
    print(f"PCA explained variance ratio: {[round(r, 4) for r in pca.explained_variance_ratio]}")

    listed = [m.kmeans.id or m.pca.id for m in client.list_models(page_size=1)]
    assert model.id in listed and pca.id in listed, listed
    print(f"listed: {len(listed)} model(s)")

    try:
        client.assign(model.id, [[1.0, 2.0]])
        sys.exit("a row of the wrong width was accepted")
    except segmenta.InvalidArgument as e:
        print(f"bad input rejected: {e}")

    log = client.upload_transactions(transactions(600), name="py-log.csv")
    seg = client.wait(client.start_segment(transactions_id=log.id, k=3, backend="cpu")).segmentation
    for s in seg.segments:
        print(f"segment {s.id}: {s.size} customers, {s.description}")
    assert seg.k == 3 and seg.n_customers == 600
    assert sorted(s.size for s in seg.segments) == [200, 200, 200], [s.size for s in seg.segments]
    report = client.download_artifact(seg.id, "report.html")
    assert b"<h2>Segments</h2>" in report
    print(f"report.html downloaded ({len(report)} bytes); artifacts: {list(seg.artifacts)}")

    # A dataset with models refuses a plain delete; with cascade its models go too.
    deleted = client.delete_model(model.id)
    try:
        client.delete_dataset(dataset.id)
        sys.exit("a dataset with a model was deleted without cascade")
    except segmenta.FailedPrecondition:
        pass
    deleted += client.delete_dataset(dataset.id, cascade=True)
    deleted += client.delete_transactions(log.id, cascade=True)
    assert pca.id in deleted and seg.id in deleted, deleted
    print(f"deleted: {', '.join(deleted)}")
    print("round trip ok")


if __name__ == "__main__":
    main()
