#!/usr/bin/env python3
"""The Python baseline of benches/mlserver.rs: what percore does per job, in grpc.aio.

    python3 bench_client.py --source 127.0.0.1:PORT --compute 127.0.0.1:PORT \
        [--model rowstats] [--input-name INPUT0] [--concurrency 16] [--duration 10] \
        [--devices 1000]

C tasks in a closed loop for D seconds, each job: Fetch from the data source
(device dev-NNNNNNN of --devices, in turn, tick = now in Unix ms), then ModelInfer
on the compute node with the fetched tensor as a raw input (raw_input_contents,
as percore sends it), over one channel to each. Prints one JSON object on stdout:
jobs, ok, failed, elapsed_s, jobs_per_s, end-to-end latency p50/p99 of the ok jobs
in µs, and cpu_us_per_job = this process's CPU time (user + system) / jobs.
"""
import argparse
import asyncio
import json
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "generated"))

import grpc  # noqa: E402
import grpc_predict_v2_pb2 as kserve  # noqa: E402
import grpc_predict_v2_pb2_grpc as kserve_grpc  # noqa: E402
import percore_source_pb2 as source_pb  # noqa: E402
import percore_source_pb2_grpc as source_grpc  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values, q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


async def run(args) -> dict:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(args.source, options=options) as source_channel, \
            grpc.aio.insecure_channel(args.compute, options=options) as compute_channel:
        fetch = source_grpc.DataSourceStub(source_channel).Fetch
        infer = kserve_grpc.GRPCInferenceServiceStub(compute_channel).ModelInfer
        devices = [f"dev-{index:07d}" for index in range(1, args.devices + 1)]
        counts = {"ok": 0, "failed": 0}
        latencies = []
        errors = {}
        next_device = 0
        deadline = args.timeout

        async def one_job() -> None:
            nonlocal next_device
            device = devices[next_device % len(devices)]
            next_device += 1
            started = time.perf_counter_ns()
            try:
                data = await fetch(
                    source_pb.FetchRequest(
                        device_id=device, **{"class": "bench"}, tick_unix_ms=time.time_ns() // 1_000_000
                    ),
                    timeout=deadline,
                )
                request = kserve.ModelInferRequest(
                    model_name=args.model,
                    inputs=[
                        kserve.ModelInferRequest.InferInputTensor(
                            name=args.input_name, datatype=data.datatype, shape=data.shape
                        )
                    ],
                    raw_input_contents=[data.raw],
                )
                reply = await infer(request, timeout=deadline)
                if not reply.raw_output_contents and not reply.outputs:
                    raise RuntimeError("a reply without outputs")
            except Exception as error:  # noqa: BLE001 - every failure is counted
                counts["failed"] += 1
                key = getattr(error, "code", lambda: type(error).__name__)()
                errors[str(key)] = errors.get(str(key), 0) + 1
                return
            counts["ok"] += 1
            latencies.append((time.perf_counter_ns() - started) // 1_000)

        async def worker(stop_at: float) -> None:
            while time.perf_counter() < stop_at:
                await one_job()

        # Warm-up: open both connections before the clock starts.
        await worker(time.perf_counter() + 0.5)
        counts.update(ok=0, failed=0)
        latencies.clear()
        errors.clear()
        cpu_before = cpu_seconds()
        began = time.perf_counter()
        stop_at = began + args.duration
        await asyncio.gather(*(worker(stop_at) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds() - cpu_before
    jobs = counts["ok"] + counts["failed"]
    latencies.sort()
    return {
        "client": "python grpc.aio",
        "grpc_version": grpc.__version__,
        "concurrency": args.concurrency,
        "jobs": jobs,
        "ok": counts["ok"],
        "failed": counts["failed"],
        "errors": errors,
        "elapsed_s": elapsed,
        "jobs_per_s": jobs / elapsed if elapsed > 0 else 0.0,
        "ok_per_s": counts["ok"] / elapsed if elapsed > 0 else 0.0,
        "latency_us": {"p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99)},
        "cpu_s": cpu,
        "cpu_us_per_job": cpu * 1e6 / max(jobs, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="data source host:port")
    parser.add_argument("--compute", required=True, help="KServe v2 compute node host:port")
    parser.add_argument("--model", default="rowstats")
    parser.add_argument("--input-name", default="INPUT0")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=2.0, help="per call, seconds")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
