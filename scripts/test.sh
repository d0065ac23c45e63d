#!/usr/bin/env bash
# Runs Segmenta's test suite on a fresh machine: installs Mesa's software
# Vulkan driver (lavapipe) when no Vulkan driver is present, so the WGSL
# shaders really execute, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

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

# The Python client test needs grpcio-tools (from PyPI).
if python3 -m pip install -q --disable-pip-version-check -r clients/python/requirements.txt >/dev/null 2>&1 &&
    python3 -c "import grpc, grpc_tools" 2>/dev/null; then
    export SEGMENTA_REQUIRE_PYTHON=1
else
    echo "warning: could not install grpcio-tools: the Python client test will be skipped" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo test"
cargo test --all-targets
cargo test --doc
echo "== bench smoke test (segmenta bench --quick)"
cargo run --quiet -- bench --quick --iters 3 --repeats 1
