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


# --- Spark -------------------------------------------------------------------
# PySpark starts its JVM with a fork of this process. A fork while gRPC's
# threads run (any earlier test's channel) can lose the JVM's handshake
# ("Java gateway process exited before sending its port number"), so when
# the Spark tests are collected the session starts before any test runs.

SPARK_PARTITIONS = 4
_spark_session = None


def spark_session():
    """The tests' one local Spark session, started on first use."""
    global _spark_session
    if _spark_session is None:
        _spark_session = _start_spark()
    return _spark_session


def _start_spark():
    import sys
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (SparkSession.builder.master(f"local[{SPARK_PARTITIONS},2]")  # 2 tries per task
               .appName("segmenta-tests")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", str(SPARK_PARTITIONS))
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    try:
        session = builder.getOrCreate()
    except Exception as e:  # noqa: BLE001 - retried once, loudly, then raised
        if "Java gateway process exited" not in str(e):
            raise
        print(f"\nWARNING: Spark's JVM did not start ({e}); retrying once", file=sys.stderr, flush=True)
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    if any(item.path.name == "test_spark.py" for item in items):
        try:
            import pyspark  # noqa: F401
        except ImportError:
            return  # test_spark.py skips loudly (or fails under SEGMENTA_REQUIRE_SPARK)
        spark_session()


def pytest_sessionfinish(session, exitstatus):
    if _spark_session is not None:
        _spark_session.stop()


def deadline(seconds):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end
