#!/usr/bin/env bash
# The GPU check: parity tests against the real adapter, then the standard
# benchmark on every backend beside the peers, into one JSON and one
# Markdown table.
#
#   scripts/gpu-check.sh --prepare      here, with cargo: build and strip the
#                                       binaries into .gpu-check/bin and fetch
#                                       the Vulkan loader packages into .gl/
#   scripts/gpu-check.sh [--quick] [--out DIR]
#                                       anywhere (the GPU machine has no Rust):
#                                       runs what --prepare left, or builds it
#                                       when cargo is there
#
# --quick runs the same steps at small sizes, on whatever adapter there is
# (the software driver, lavapipe, included): a few minutes. The full run is
# sized for under 8 minutes on an NVIDIA GPU. Output: DIR/gpu-check.json and
# DIR/gpu-check.md (DIR defaults to gpu-check/, ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
prepare=0
out=gpu-check
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --prepare) prepare=1 ;;
        --out) out="${2:?--out needs a directory}"; shift ;;
        --out=*) out="${1#--out=}" ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

bin=.gpu-check/bin
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

# The test executables the check runs: GPU-against-CPU parity and seeding.
tests=(parity seeding shaders)

build() {
    echo "== building release binaries"
    cargo build --release --bin segmenta
    mkdir -p "$bin"
    cp target/release/segmenta "$bin/segmenta"
    for t in "${tests[@]}"; do
        exe=$(cargo test --release --test "$t" --no-run --message-format=json \
            | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
        [ -n "$exe" ] || { echo "gpu-check: no test executable for $t" >&2; exit 1; }
        cp "$exe" "$bin/$t"
    done
    # Debug info off: the whole checkout travels in 64 MiB.
    strip "$bin"/* 2>/dev/null || true
    du -sh "$bin"
}

if [ "$prepare" = 1 ]; then
    build
    if command -v apt-get >/dev/null; then
        echo "== fetching the Vulkan loader packages into .gl/"
        mkdir -p .gl /tmp/amd64/partial
        o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
        # shellcheck disable=SC2086
        apt-get $o update -qq
        # shellcheck disable=SC2086
        (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    fi
    echo "== ready: run scripts/gpu-check.sh on the GPU machine, carrying .gpu-check and .gl"
    exit 0
fi

started=$(date +%s)

# 1. The Vulkan loader, where the machine lacks one (as root into /, else
# into .gl/root with LD_LIBRARY_PATH).
libs=$(ldconfig -p 2>/dev/null || true)
if ! grep libvulkan >/dev/null <<<"$libs"; then
    if ls .gl/*.deb >/dev/null 2>&1; then
        echo "== unpacking the Vulkan loader from .gl/"
        if [ "$(id -u)" = 0 ]; then
            for f in .gl/*.deb; do dpkg -x "$f" /; done
            ldconfig
        else
            for f in .gl/*.deb; do dpkg -x "$f" .gl/root; done
            export LD_LIBRARY_PATH="$PWD/.gl/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        fi
    else
        echo "gpu-check: no Vulkan loader here and no .gl/ packages (run --prepare where apt-get works)" >&2
    fi
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then
    export VK_DRIVER_FILES="$icd"
fi

# 2. The binaries: carried, or built here.
missing=0
for f in segmenta "${tests[@]}"; do [ -x "$bin/$f" ] || missing=1; done
if [ "$missing" = 1 ]; then
    if command -v cargo >/dev/null; then
        build
    else
        echo "gpu-check: no $bin/segmenta and no cargo: run scripts/gpu-check.sh --prepare first" >&2
        exit 1
    fi
fi

mkdir -p "$out"
rm -f "$out"/bench-*.json
log="$out/gpu-check.log"
: >"$log"

# 3. Parity against the real adapter: a missing adapter fails, never skips.
declare -A parity
for t in "${tests[@]}"; do
    echo "== parity: $t (SEGMENTA_REQUIRE_GPU=1)"
    t0=$(date +%s)
    if SEGMENTA_REQUIRE_GPU=1 "$bin/$t" --test-threads 1 >>"$log" 2>&1; then
        parity[$t]="passed in $(( $(date +%s) - t0 )) s"
    else
        parity[$t]="FAILED (see gpu-check.log)"
    fi
    echo "   ${parity[$t]}"
done

# 4. The benchmark: every backend, the peers beside them. FAISS trains on
# every row (max_points_per_centroid raised in bench_peers.py).
workloads=W1,W3,W4,W5
bench_failed=0
if [ "$quick" = 1 ]; then
    # --quick with --backend all skips a software adapter: time the GPU
    # on its own, then the CPU and the peers.
    echo "== bench --quick: gpu"
    "$bin/segmenta" bench --quick --backend gpu --workload "$workloads" --repeats 1 --json >"$out/bench-gpu.json" 2>>"$log" \
        || { bench_failed=1; rm -f "$out/bench-gpu.json"; }
    echo "== bench --quick: cpu and peers"
    "$bin/segmenta" bench --quick --backend cpu --workload "$workloads" --repeats 1 --compare --json >"$out/bench-cpu.json" 2>>"$log" \
        || "$bin/segmenta" bench --quick --backend cpu --workload "$workloads" --repeats 1 --json >"$out/bench-cpu.json" 2>>"$log" \
        || { bench_failed=1; rm -f "$out/bench-cpu.json"; }
else
    echo "== bench: every backend and the peers"
    "$bin/segmenta" bench --backend all --workload "$workloads" --repeats 3 --compare --json >"$out/bench-all.json" 2>>"$log" \
        || "$bin/segmenta" bench --backend all --workload "$workloads" --repeats 3 --json >"$out/bench-all.json" 2>>"$log" \
        || { bench_failed=1; rm -f "$out/bench-all.json"; }
fi

# 5. One JSON and one Markdown table.
PARITY="$(for t in "${tests[@]}"; do echo "$t=${parity[$t]}"; done)" \
BENCH_FAILED=$bench_failed ELAPSED=$(( $(date +%s) - started )) QUICK=$quick OUT="$out" python3 - <<'PY'
import glob, json, os
out = os.environ["OUT"]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "bench-*.json")))]
parity = dict(l.split("=", 1) for l in os.environ["PARITY"].splitlines() if "=" in l)
results = [r for run in runs for r in run["results"]]
peaks = {k: next((run[k] for run in runs if run.get(k) is not None), None)
         for k in ["cpu_peak_gflops", "gpu_peak_gflops", "cpu_simd_level", "cpu_fma_peak_gflops"]}
doc = {"quick": os.environ["QUICK"] == "1", "elapsed_s": int(os.environ["ELAPSED"]),
       "bench_failed": os.environ["BENCH_FAILED"] == "1",
       "parity": parity, **peaks, "results": results}
json.dump(doc, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
def quick_or_faiss_gpu(results, doc):
    """Whether the run needed no FAISS GPU row (--quick on the software
    driver), or has one."""
    return doc["quick"] or any(r["implementation"].startswith("faiss") and r["adapter"] == "gpu"
                               for r in results)
def f(v, d=1):
    return "-" if v is None else f"{v:.{d}f}"
fma = ", ".join(f"{k} {v:.1f}" for k, v in (peaks["cpu_fma_peak_gflops"] or {}).items())
peers = sorted({r["implementation"] for r in results if not r["implementation"].startswith("segmenta")})
lines = [f"# GPU check{' (--quick)' if doc['quick'] else ''}", "",
         f"Elapsed: {doc['elapsed_s']} s. GPU FMA peak: {f(peaks['gpu_peak_gflops'])} GFLOP/s; "
         f"CPU matrix-multiply peak: {f(peaks['cpu_peak_gflops'])} GFLOP/s; "
         f"CPU FMA peak: {fma or '-'} GFLOP/s (kernels at {peaks['cpu_simd_level']}).", "",
         "Peers: " + (", ".join(peers) if peers else
                      "none ran (scikit-learn or FAISS missing: see gpu-check.log)") + ".", "",
         *([] if quick_or_faiss_gpu(results, doc) else
           ["FAISS on the GPU did not run (see gpu-check.log): it needs the faiss-gpu-cu12 "
            "package, with CUDA 12's cuBLAS (about 400 MB more), installed for this python3.", ""]),
         "| parity | result |", "|---|---|"]
lines += [f"| {t} | {r} |" for t, r in parity.items()]
lines += ["", "| workload | implementation | adapter | unit | median ms | GFLOP/s | % of peak "
          "| init ms | init % of a 20-iteration fit |",
          "|---|---|---|---|---|---|---|---|---|"]
for r in results:
    pf, share = r.get("peak_fraction"), r.get("init_share")
    lines.append(f"| {r['workload']} | {r['implementation']} | {r['adapter']} | {r['unit']} | "
                 f"{f(r['median_ms'], 2)} | {f(r.get('gflops'))} | {f(pf * 100 if pf else None, 0)} | "
                 f"{f(r.get('init_ms'))} | {f(share * 100 if share else None)} |")
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if doc["bench_failed"]:
    lines.append("\nA benchmark run FAILED: see gpu-check.log.")
    print(lines[-1])
    open(os.path.join(out, "gpu-check.md"), "a").write(lines[-1] + "\n")
failed = [t for t, r in parity.items() if r.startswith("FAILED")]
if failed or doc["bench_failed"]:
    raise SystemExit(f"gpu-check: failed: {', '.join(failed + (['bench'] if doc['bench_failed'] else []))}")
PY
echo "== wrote $out/gpu-check.json and $out/gpu-check.md"
