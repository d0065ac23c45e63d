"""Segmenta on Spark against Spark MLlib's KMeans, in one local Spark.

    python3 -m venv .venv && .venv/bin/pip install './clients/python[spark]'
    cargo build --release
    .venv/bin/python scripts/bench_spark.py [--rows 2000000] [--dims 32] [--k 64] [--iters 20]

Starts `target/release/segmenta serve` on 127.0.0.1:0 (one server: this
machine is one node) and a local Spark with one task slot per core. The data
are generated in Spark (k overlapping groups: centres drawn with standard
deviation `--spread`, unit noise) and cached before timing. Both fits start
from the same k centres (k rows drawn at random) and run `--iters`
iterations (tolerance 0; the script checks that neither stopped early).

Per iteration:
* Segmenta: the median of the Lloyd iterations' wall-clock times (each one
  Spark job sending the centroids to the server and adding up the sums);
  the first pass, which caches the partitions on the server, is reported on
  its own.
* MLlib (`pyspark.mllib.clustering.KMeans.train` with `initialModel`, the
  API that takes given centres): (time of N iterations − time of 1) / (N − 1),
  so its conversion and caching of the input are not counted against it.
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def start_server(binary: str, data_dir: str):
    process = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--backend", "cpu", "--data-dir", data_dir,
         "--max-message-bytes", str(64 << 20)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    address = []
    ready = threading.Event()

    def read():
        for line in process.stderr:
            if "segmenta serving on " in line and not address:
                address.append(line.split("segmenta serving on ", 1)[1].split()[0])
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        process.kill()
        sys.exit("segmenta serve did not start")
    return process, address[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--spread", type=float, default=0.5,
                        help="standard deviation of the group centres (noise has 1): overlapping "
                             "groups keep Lloyd moving for all the iterations")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "segmenta"))
    parser.add_argument("--skip-mllib", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from segmenta.spark import KMeans

    cores = os.cpu_count() or 2
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("segmenta-bench")
             .config("spark.driver.host", "127.0.0.1").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").config("spark.sql.shuffle.partitions", str(args.partitions))
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=args.spread, size=(args.k, args.dims))
    group = (F.col("id") % args.k + 1).cast("int")
    columns = [(F.element_at(F.array(*[F.lit(float(v)) for v in centres[:, j]]), group)
                + F.randn(seed=j)).cast("float").alias(f"f{j}") for j in range(args.dims)]
    df = (spark.range(args.rows, numPartitions=args.partitions).select(*columns)
          .withColumn("features", F.array(*[F.col(f"f{j}") for j in range(args.dims)]))
          .select("features").cache())
    t = time.perf_counter()
    n = df.count()
    print(f"data: {n:,} × {args.dims} in {args.partitions} partitions, generated and cached in "
          f"{time.perf_counter() - t:.1f} s; k = {args.k}, {args.iters} iterations, {cores} cores")
    first = np.array([r.features for r in df.limit(args.k * 50).collect()], dtype=np.float32)
    init = first[rng.choice(len(first), size=args.k, replace=False)]

    with tempfile.TemporaryDirectory() as data_dir:
        server, address = start_server(args.binary, data_dir)
        try:
            t = time.perf_counter()
            model = KMeans(k=args.k, featuresCol="features", initMode=init, maxIter=args.iters,
                           tol=0.0, servers=[address]).fit(df)
            total = time.perf_counter() - t
        finally:
            server.terminate()
            server.wait(20)
    s = model.summary
    if s.numIter != args.iters:
        sys.exit(f"Segmenta stopped after {s.numIter} iterations: use more overlapping data (--spread)")
    ours = statistics.median(s.iterationSeconds)
    print(f"segmenta: {total:.2f} s in all ({s.numIter} iterations, {s.passes} Spark jobs); "
          f"caching the partitions {s.uploadSeconds:.2f} s; per iteration median {ours * 1000:.0f} ms "
          f"(min {min(s.iterationSeconds) * 1000:.0f}, max {max(s.iterationSeconds) * 1000:.0f}); "
          f"cost {s.trainingCost:.6g}")
    if args.skip_mllib:
        return
    from pyspark.mllib.clustering import KMeans as MLlibKMeans
    from pyspark.mllib.clustering import KMeansModel as MLlibModel
    from pyspark.mllib.linalg import Vectors

    rdd = df.rdd.map(lambda r: Vectors.dense(r.features)).cache()
    rdd.count()
    times, centres_after = {}, {}
    for iters in (1, args.iters - 1, args.iters):
        t = time.perf_counter()
        mllib = MLlibKMeans.train(rdd, args.k, maxIterations=iters, epsilon=0.0,
                                  initialModel=MLlibModel([c.astype(np.float64) for c in init]))
        times[iters] = time.perf_counter() - t
        centres_after[iters] = np.array(mllib.clusterCenters)
    # pyspark.mllib does not say how many iterations ran: if the last one
    # still moved the centres, none stopped early.
    if np.array_equal(centres_after[args.iters - 1], centres_after[args.iters]):
        sys.exit("MLlib stopped before the last iteration: use more overlapping data (--spread)")
    per = (times[args.iters] - times[1]) / (args.iters - 1)
    cost = mllib.computeCost(rdd)
    print(f"mllib: {times[args.iters]:.2f} s for {args.iters} iterations ({times[1]:.2f} s for 1); "
          f"per iteration {per * 1000:.0f} ms; cost {cost:.6g}")
    print(f"ratio: MLlib / Segmenta per iteration = {per / ours:.2f}×; in all "
          f"{times[args.iters] / total:.2f}×")
    spark.stop()


if __name__ == "__main__":
    main()
