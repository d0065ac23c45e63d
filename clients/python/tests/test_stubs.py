"""The committed gRPC stubs are what the proto generates today."""
import importlib.util
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "segmenta" / "v1"


def test_committed_stubs_are_current(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_stubs", HERE.parent / "scripts" / "gen_stubs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    for name in ("segmenta_pb2.py", "segmenta_pb2.pyi", "segmenta_pb2_grpc.py"):
        fresh = (tmp_path / "segmenta" / "v1" / name).read_text()
        committed = (PACKAGE / name).read_text()
        assert fresh == committed, (
            f"src/segmenta/v1/{name} is stale: run `{sys.executable} clients/python/scripts/gen_stubs.py`")
