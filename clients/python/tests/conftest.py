"""Starts real `segmenta serve` processes on 127.0.0.1:0 for the tests.

The binary is $SEGMENTA_BIN, else the repository's target/debug/segmenta
(`cargo build` makes it). Each server gets its own data directory and is
stopped (SIGTERM, then SIGKILL) at the end of the session.
"""
import hashlib
import os
import pathlib
import queue
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 60


def _binary() -> str:
    path = os.environ.get("SEGMENTA_BIN") or str(ROOT / "target" / "debug" / "segmenta")
    if not pathlib.Path(path).is_file():
        pytest.fail(f"no segmenta binary at {path}: run `cargo build` or set SEGMENTA_BIN", pytrace=False)
    return path


class Server:
    """A `segmenta serve` child; `address` is the 127.0.0.1 port it bound."""

    def __init__(self, data_dir: pathlib.Path, *extra: str):
        env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
        env.pop("RUST_LOG", None)
        env.pop("SEGMENTA_SERVER", None)
        self.log = []
        self.process = subprocess.Popen(
            [_binary(), "serve", "--addr", "127.0.0.1:0", "--backend", "cpu",
             "--data-dir", str(data_dir), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env)
        found = queue.Queue()

        def read():
            for line in self.process.stderr:
                self.log.append(line.rstrip("\n"))
                if "segmenta serving on " in line:
                    found.put(line.split("segmenta serving on ", 1)[1].split()[0])

        threading.Thread(target=read, daemon=True).start()
        try:
            self.address = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise RuntimeError("segmenta serve did not start:\n" + "\n".join(self.log))
        assert self.address.startswith("127.0.0.1:"), self.address

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("data"))
    yield s
    s.stop()
    # A panic in the server is a failure of whichever test caused it.
    panics = [line for line in s.log if "panicked" in line]
    assert not panics, "the server panicked:\n" + "\n".join(panics)


KEYS = {"reader": ("read", "r-key-0123456789abcdef"), "writer": ("write", "w-key-0123456789abcdef"),
        "other": ("write", "o-key-0123456789abcdef")}


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """A server with API keys: a reader and a writer."""
    data = tmp_path_factory.mktemp("keyed")
    keys = data.parent / "keys.txt"
    keys.write_text("".join(f"{name} {role} {hashlib.sha256(key.encode()).hexdigest()}\n"
                            for name, (role, key) in KEYS.items()))
    s = Server(data, "--auth-keys", str(keys))
    yield s
    s.stop()


@pytest.fixture
def client(server):
    import segmenta
    with segmenta.Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def blobs():
    """Three separated groups in 4-D: 600 rows, labels by construction."""
    import numpy as np
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0, 0, 0], [8, 8, 0, 0], [0, 8, 8, 8]], dtype=np.float64)
    labels = np.repeat(np.arange(3), 200)
    X = centres[labels] + rng.normal(scale=1.0, size=(600, 4))
    return X, labels


def deadline(seconds):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end
