"""Times scikit-learn's (and, when installed, FAISS's) Lloyd iteration on the
data and initial centroids that `segmenta bench --compare` wrote.

Usage: bench_peers.py DIR ITERS  -> JSON list of [name, median_ms, min_ms] on stdout.
Each peer runs a fixed number of iterations with tol = 0; the per-iteration
time is the fit time divided by the iterations it ran, median of 3 fits.
"""
import json
import statistics
import sys
import time

import numpy as np


def per_iteration(fit, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        n_iter = fit()
        times.append((time.perf_counter() - t) * 1e3 / max(n_iter, 1))
    return statistics.median(times), min(times)


def main():
    folder, iters = sys.argv[1], int(sys.argv[2])
    x = np.load(f"{folder}/x.npy")
    init = np.load(f"{folder}/init.npy")
    results = []

    from sklearn.cluster import KMeans
    import sklearn

    def sk():
        km = KMeans(n_clusters=init.shape[0], init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
        km.fit(x)
        return km.n_iter_

    med, best = per_iteration(sk)
    results.append([f"scikit-learn {sklearn.__version__}", med, best])

    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        def fa():
            km = faiss.Kmeans(x.shape[1], init.shape[0], niter=iters, verbose=False, min_points_per_centroid=1,
                              max_points_per_centroid=10**9)
            km.train(x, init_centroids=init)
            return iters

        med, best = per_iteration(fa)
        results.append([f"faiss {faiss.__version__}", med, best])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
