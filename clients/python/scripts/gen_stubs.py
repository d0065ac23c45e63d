"""Regenerates the gRPC stubs in src/segmenta/v1 from the repository's proto/.

    python clients/python/scripts/gen_stubs.py [OUT_DIR]

Needs grpcio-tools at the version pinned in pyproject.toml's test extra.
"""
import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parents[2] / "proto"


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
        f"--grpc_python_out={out}", str(PROTO / "segmenta/v1/segmenta.proto"),
    ])
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / "src")
