#!/usr/bin/env python3
"""A percore data source in Python: the `percore.source.v1.DataSource` gRPC service.

    python3 source_server.py --port 0 --shape 4,8

Listens on 127.0.0.1 (port 0: the OS picks one) and prints
`listening on 127.0.0.1:PORT` as its first line on stdout, flushed, once it
takes calls; tests and scripts read that line. Every Fetch is answered with an
FP32 tensor of the `--shape` given, little-endian, row-major, whose content is a
deterministic function of (device id, tick), so anyone can recompute it:

    seed       = fnv1a64(f"{device_id}@{tick_unix_ms}".encode("utf-8"))
    x_i        = splitmix64((seed + i * 0x9e3779b97f4a7c15) mod 2**64)   for element i = 0, 1, ...
    element_i  = float32((x_i >> 40) / 2**24)            # 24 bits: exact, in [0, 1)

with FNV-1a 64 and splitmix64 as written below (the usual constants): x_i is
the i-th output of a SplitMix64 generator seeded with `seed`, the same content
`percore mock-source --datatype FP32` sends (README "Real tensors").
`captured_unix_ms` is the tick itself. The class in the request is not looked at.
"""
import argparse
import asyncio
import pathlib
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "generated"))

import grpc  # noqa: E402
import percore_source_pb2 as pb  # noqa: E402
import percore_source_pb2_grpc as pb_grpc  # noqa: E402

MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits: offset basis 0xcbf29ce484222325; for each byte, xor it in,
    then multiply by the prime 0x100000001b3 (mod 2**64)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & MASK64
    return h


def splitmix64(x: int) -> int:
    """splitmix64's output for state x: add the golden gamma 0x9e3779b97f4a7c15,
    then mix (xor-shift 30, * 0xbf58476d1ce4e5b9, xor-shift 27,
    * 0x94d049bb133111eb, xor-shift 31), all mod 2**64."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def tensor_values(device_id: str, tick_unix_ms: int, count: int) -> list:
    """The `count` float values of (device_id, tick_unix_ms)'s tensor, in order."""
    seed = fnv1a64(f"{device_id}@{tick_unix_ms}".encode("utf-8"))
    return [
        (splitmix64((seed + i * 0x9E3779B97F4A7C15) & MASK64) >> 40) / float(1 << 24)
        for i in range(count)
    ]


def tensor_bytes(device_id: str, tick_unix_ms: int, count: int) -> bytes:
    """The tensor as FP32 little-endian bytes (each value is exact in FP32)."""
    return struct.pack(f"<{count}f", *tensor_values(device_id, tick_unix_ms, count))


class DataSource(pb_grpc.DataSourceServicer):
    def __init__(self, shape):
        self.shape = list(shape)
        self.count = 1
        for dim in self.shape:
            self.count *= dim

    async def Fetch(self, request, context):
        return pb.FetchResponse(
            datatype="FP32",
            shape=self.shape,
            raw=tensor_bytes(request.device_id, request.tick_unix_ms, self.count),
            captured_unix_ms=request.tick_unix_ms,
        )


def parse_shape(text: str):
    dims = [int(part) for part in text.split(",") if part.strip()]
    if not dims or any(dim <= 0 for dim in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: dims must be positive, e.g. 4,8")
    return dims


async def serve(port: int, shape) -> None:
    server = grpc.aio.server()
    pb_grpc.add_DataSourceServicer_to_server(DataSource(shape), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 = any free")
    parser.add_argument("--shape", type=parse_shape, default=[4, 8], help="tensor shape, e.g. 4,8")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.shape))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
