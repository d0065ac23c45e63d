"""Times scikit-learn and FAISS on the data `segmenta bench --compare` wrote.

Usage: bench_peers.py DIR TASK PARAM ITERS
  TASK lloyd    : PARAM = k; Lloyd from DIR/init.npy, ITERS iterations, tol = 0;
                  reports the fit time divided by the iterations run.
  TASK pca      : PARAM = components; a whole fit on every row.
  TASK kmeans++ : PARAM = k; greedy k-means++ initialisation.
Prints a JSON list of [name, adapter, median_ms, min_ms]: median and best of 3.
FAISS runs when installed, on the GPU too when it sees one (faiss-gpu).
"""
import json
import statistics
import sys
import time

import numpy as np


def timed(fit, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        units = fit()
        times.append((time.perf_counter() - t) * 1e3 / max(units, 1))
    return statistics.median(times), min(times)


def main():
    folder, task, param, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    x = np.load(f"{folder}/x.npy")
    results = []
    import sklearn
    try:
        import faiss
    except ImportError:
        faiss = None
    sk = f"scikit-learn {sklearn.__version__}"

    if task == "lloyd":
        from sklearn.cluster import KMeans
        init = np.load(f"{folder}/init.npy")

        # "lloyd" scores every pair; "elkan" prunes with triangle-inequality
        # bounds, as Segmenta's CPU path does (Hamerly's bounds).
        for algorithm in ("lloyd", "elkan"):
            def fit_sklearn():
                km = KMeans(n_clusters=param, init=init, n_init=1, max_iter=iters, tol=0.0,
                            algorithm=algorithm)
                km.fit(x)
                return km.n_iter_

            results.append([f"{sk} {algorithm}", "cpu", *timed(fit_sklearn)])
        if faiss is not None:
            gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            for gpu in [False] + ([True] if gpus > 0 else []):
                def fit_faiss():
                    km = faiss.Kmeans(x.shape[1], param, niter=iters, verbose=False, gpu=gpu,
                                      min_points_per_centroid=1, max_points_per_centroid=10**9)
                    km.train(x, init_centroids=init)
                    return iters

                results.append([f"faiss {faiss.__version__}", "gpu" if gpu else "cpu", *timed(fit_faiss)])
    elif task == "pca":
        from sklearn.decomposition import PCA

        def fit_sklearn():
            PCA(n_components=param, svd_solver="covariance_eigh").fit(x)
            return 1

        results.append([sk, "cpu", *timed(fit_sklearn)])
        if faiss is not None:
            def fit_faiss():
                pca = faiss.PCAMatrix(x.shape[1], param)
                # Train on every row, as Segmenta does: by default FAISS
                # subsamples to 1000·d rows (128,000 of W4's 1,000,000).
                pca.max_points_per_d = x.shape[0] // x.shape[1] + 1
                pca.train(x)
                return 1

            results.append([f"faiss {faiss.__version__}", "cpu", *timed(fit_faiss)])
    elif task == "kmeans++":
        from sklearn.cluster import kmeans_plusplus

        def fit_sklearn():
            kmeans_plusplus(x, n_clusters=param, random_state=0)
            return 1

        results.append([sk, "cpu", *timed(fit_sklearn)])
    else:
        sys.exit(f"unknown task {task}")
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
