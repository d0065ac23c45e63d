"""The `lifetimes` package on the summary `segmenta bench --clv --compare`
wrote: BG/NBD and Gamma-Gamma fits and the same scores, timed.

Usage: bench_clv_peer.py SUMMARY.csv HORIZON_WEEKS REPEATS
Prints one JSON object: {"version", "fit_bgnbd_ms", ..., "params"}.
"""

import json
import sys
import time
import warnings

import pandas as pd

warnings.simplefilter("ignore")


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, (time.perf_counter() - t) * 1e3


def main():
    path, horizon, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    import lifetimes
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    d = pd.read_csv(path)
    f, r, t, m = d["x"], d["t_x"], d["T"], d["m"]
    rows = {k: [] for k in ["fit_bgnbd_ms", "fit_gamma_gamma_ms", "score_ms"]}
    for _ in range(repeats):
        bgf, ms = timed(lambda: BetaGeoFitter().fit(f, r, t))
        rows["fit_bgnbd_ms"].append(ms)
        repeat = d[d["x"] > 0]
        ggf, ms = timed(
            lambda: GammaGammaFitter().fit(repeat["x"], repeat["m"])
        )
        rows["fit_gamma_gamma_ms"].append(ms)

        def score():
            bgf.conditional_probability_alive(f, r, t)
            bgf.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, t)
            ggf.conditional_expected_average_profit(f, m.fillna(0.0))
            # lifetimes' CLV: monthly steps (time in months, freq "W").
            ggf.customer_lifetime_value(
                bgf, f, r, t, m.fillna(0.0), time=12, freq="W", discount_rate=0.0
            )

        _, ms = timed(score)
        rows["score_ms"].append(ms)
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    med["total_ms"] = sum(med.values())
    med["version"] = lifetimes.__version__
    med["params"] = {
        "bgnbd": {k: float(v) for k, v in bgf.params_.items()},
        "gamma_gamma": {k: float(v) for k, v in ggf.params_.items()},
    }
    print(json.dumps(med))


if __name__ == "__main__":
    main()
