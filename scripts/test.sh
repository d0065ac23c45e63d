#!/usr/bin/env bash
# Runs Segmenta's test suite on a fresh machine: installs Mesa's software
# Vulkan driver (lavapipe) when no Vulkan driver is present, so the WGSL
# shaders really execute, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
if [ -n "${CI:-}" ]; then
    # A fresh clone builds once: incremental caches only cost disk (gigabytes) and time.
    export CARGO_INCREMENTAL=0
fi

have_vulkan() {
    ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' &&
        ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1
}

if ! have_vulkan; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "== installing Mesa's software Vulkan driver (mesa-vulkan-drivers)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Mesa's software Vulkan driver (mesa-vulkan-drivers) with sudo"
        sudo apt-get update -qq
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        echo "warning: no Vulkan driver and no way to install one: GPU tests will be skipped" >&2
    fi
fi
if have_vulkan; then
    # A driver is installed: a GPU test that finds no adapter is a failure, not a skip.
    export SEGMENTA_REQUIRE_GPU=1
fi

# The Python package (clients/python) and its tests' requirements (pytest,
# scikit-learn, pandas, pyarrow, grpcio-tools) go into a virtual environment
# of their own (Debian 12's python3 refuses system-wide pip installs, PEP
# 668). The Rust tests run Python as $SEGMENTA_PYTHON.
VENV=.venv-test
python_warning() {
    echo "" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "warning: $1" >&2
    echo "warning: the Python client tests will be SKIPPED (not run, not failed)" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "" >&2
}
make_venv() {
    rm -rf "$VENV"
    python3 -m venv "$VENV" >/dev/null 2>&1 && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}
setup_python() {
    if ! command -v python3 >/dev/null 2>&1; then
        python_warning "python3 not found"
        return 1
    fi
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "== creating a virtual environment for the Python tests ($VENV)"
        if ! make_venv; then
            # Debian ships venv's pip bootstrap (ensurepip) in python3-venv.
            if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
                echo "== installing Python's venv module (python3-venv)"
                apt-get update -qq || true
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
            fi
            if ! make_venv; then
                rm -rf "$VENV"
                python_warning "could not create a virtual environment (python3 -m venv $VENV; is python3-venv installed?)"
                return 1
            fi
        fi
    fi
    echo "== installing the Python package (clients/python, with its test and spark extras) into $VENV"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "./clients/python[test,spark]" >/dev/null; then
        python_warning "could not install ./clients/python[test,spark] into $VENV"
        return 1
    fi
    if ! "$VENV/bin/python" -c "import segmenta, sklearn, pandas, pyarrow, grpc_tools, pyspark" 2>/dev/null; then
        python_warning "$VENV/bin/python cannot import segmenta and its test requirements"
        return 1
    fi
}
# The Spark tests run a local Spark, which needs Java 17 (Debian's
# openjdk-17-jre-headless).
have_java() { command -v java >/dev/null 2>&1 && java -version >/dev/null 2>&1; }
if ! have_java && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing Java for the Spark tests (openjdk-17-jre-headless)"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null || true
fi

if setup_python; then
    export SEGMENTA_PYTHON="$PWD/$VENV/bin/python"
    # Python is set up: a Python test that cannot run is a failure, not a skip.
    export SEGMENTA_REQUIRE_PYTHON=1
    if have_java; then
        export SEGMENTA_REQUIRE_SPARK=1
    elif [ -n "${CI:-}" ]; then
        echo "error: CI must run the Spark tests, and Java could not be installed" >&2
        exit 1
    else
        python_warning "no Java: the Spark tests will be skipped"
    fi
elif [ -n "${CI:-}" ]; then
    echo "error: CI must run the Python client tests, and Python could not be set up" >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo test"
cargo test --all-targets
cargo test --doc
if [ -n "${SEGMENTA_PYTHON:-}" ]; then
    echo "== Python package tests (pytest, against real segmenta servers)"
    cargo build --quiet
    target_dir="${CARGO_TARGET_DIR:-target}"
    case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
    SEGMENTA_BIN="$target_dir/debug/segmenta" \
        "$SEGMENTA_PYTHON" -m pytest -q -p no:cacheprovider clients/python/tests
else
    python_warning "no Python environment: the Python package tests are not run"
fi
if [ -n "${CI:-}" ]; then
    echo "== disk used by the build: $(du -sh target 2>/dev/null | cut -f1)"
fi
echo "== bench smoke test (segmenta bench --quick)"
cargo run --quiet -- bench --quick --iters 3 --repeats 1
echo "== load test smoke (segmenta bench --service --load --quick, 2 s)"
cargo run --quiet -- bench --service --load --quick --load-seconds 2
