#!/usr/bin/env python3
"""Generates the Python gRPC stubs of percore's protos into ./generated/.

    python3 generate_stubs.py      # with grpcio-tools installed (requirements.txt)

Writes generated/percore_source_pb2{,_grpc}.py (the DataSource service) and
generated/grpc_predict_v2_pb2{,_grpc}.py (KServe v2, for bench_client.py) from
../../proto/. The folder is not committed: tests/run-all.sh runs this at setup.
"""
import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto"
OUT = HERE / "generated"
PROTOS = ["percore_source.proto", "grpc_predict_v2.proto"]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    (OUT / "__init__.py").touch()
    include = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    for proto in PROTOS:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_DIR}",
                f"-I{include}",
                f"--python_out={OUT}",
                f"--grpc_python_out={OUT}",
                str(PROTO_DIR / proto),
            ]
        )
        if code != 0:
            print(f"protoc failed on {proto} ({code})", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
