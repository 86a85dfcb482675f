"""Generator throughput: jobs per second through NATS with the local provider, for 1, 2 and 4 replicas
(real `imagegen generator` processes), in instant mode (pre-encoded images: the pipeline's own cost)
and normal mode (each image drawn and encoded).

Baseline, measured in the same run on the same nats-server: bare core-NATS request/reply round trips
to a responder in its own process, with as many requests in flight as jobs are. A job is much more
than one round trip (a JetStream fetch, progress and outcome messages, an object-store write, an
outcome event, an ack), so the ratio says what the whole job path costs against NATS alone.

Each measurement stops after ``--count`` jobs or ``--seconds``, whichever comes first; 127.0.0.1 only.

    python bench/generator.py [--count 400] [--seconds 10] [--in-flight 32] [--size 512]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import nats_names
from imagegen_testing.jobs import make_job
from imagegen_testing.nats_server import NatsServer
from imagegen_testing.net import free_port
from imagegen_testing.processes import ServiceProcess, http_ok

RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    async def echo(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@dataclass(frozen=True)
class Limits:
    count: int
    seconds: float
    in_flight: int


async def baseline(url: str, limits: Limits) -> float:
    """Request/reply round trips per second to a responder process."""
    responder = subprocess.Popen([sys.executable, "-c", RESPONDER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None
        responder.stdout.readline()
        nc = await nats.connect(url)
        payload = b"x" * 200
        done = 0
        deadline = time.perf_counter() + limits.seconds

        async def worker() -> None:
            nonlocal done
            while done < limits.count and time.perf_counter() < deadline:
                await nc.request("bench.echo", payload, timeout=5)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(limits.in_flight)))
        elapsed = time.perf_counter() - started
        await nc.close()
        return done / elapsed
    finally:
        responder.terminate()
        responder.wait()


async def job_rate(url: str, limits: Limits, size: int) -> float:
    """Jobs per second with ``in_flight`` jobs outstanding, each new one submitted as one finishes."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    finished: asyncio.Queue[str] = asyncio.Queue()
    failures = 0

    async def on_reply(msg: Msg) -> None:
        nonlocal failures
        update = jobs_pb2.JobUpdate.FromString(msg.data)
        if update.HasField("outcome"):
            failures += update.outcome.HasField("failure")
            finished.put_nowait(update.outcome.job_id)

    await nc.subscribe(nats_names.reply_wildcard("test"), cb=on_reply)

    async def submit() -> None:
        job = make_job("flux-schnell", size, size, prompt="a benchmark picture of a lighthouse at dusk")
        await js.publish(
            nats_names.JOBS_SUBJECT, job.SerializeToString(), headers={"Nats-Msg-Id": job.job_id}
        )

    started = time.perf_counter()
    deadline = started + limits.seconds
    submitted = done = 0
    for _ in range(min(limits.in_flight, limits.count)):
        await submit()
        submitted += 1
    while done < submitted and time.perf_counter() < deadline:
        try:
            await asyncio.wait_for(finished.get(), timeout=max(0.01, deadline - time.perf_counter()))
        except TimeoutError:
            break
        done += 1
        if submitted < limits.count:
            await submit()
            submitted += 1
    elapsed = time.perf_counter() - started
    # Jobs still queued are purged so that the next measurement starts empty.
    await js.purge_stream(nats_names.JOBS_STREAM)
    await nc.close()
    if failures:
        raise RuntimeError(f"{failures} jobs failed")
    return done / elapsed


def start_replicas(url: str, count: int, instant: bool, log_dir: Path) -> list[ServiceProcess]:
    replicas = []
    for n in range(count):
        port = free_port()
        process = ServiceProcess(
            f"generator-{'instant' if instant else 'normal'}-{count}-{n}",
            ["generator"],
            {
                "IMAGEGEN_NATS_URL": url,
                "IMAGEGEN_PROVIDER": "local",
                "IMAGEGEN_LOCAL_PROVIDER_INSTANT": "true" if instant else "false",
                "IMAGEGEN_GENERATOR_OPS_LISTEN": f"127.0.0.1:{port}",
                "IMAGEGEN_LOG_LEVEL": "WARNING",
            },
            log_dir,
        )
        process.start()
        replicas.append(process)
        process.wait_ready(http_ok(f"http://127.0.0.1:{port}/readyz"))
    return replicas


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, default=400, help="jobs (or round trips) per measurement at most"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of one measurement at most")
    parser.add_argument("--in-flight", type=int, default=32, help="jobs (or requests) outstanding at once")
    parser.add_argument("--size", type=int, default=512, help="side of the square images, in pixels")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    limits = Limits(args.count, args.seconds, args.in_flight)

    with (
        tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp,
        NatsServer(Path(tmp) / "nats") as server,
    ):
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(nats_names.jobs_stream_config())
        await js.add_stream(nats_names.events_stream_config())
        await nc.close()

        print(
            f"nats-server {server.url}, {os.cpu_count()} CPUs, {args.size}x{args.size} PNG, "
            f"{args.in_flight} in flight, at most {args.count} per measurement or {args.seconds:g} s"
        )
        base = await baseline(server.url, limits)
        print(f"baseline: NATS request/reply round trips  {base:10.1f} /s")
        print(
            f"{'mode':<8} {'replicas':>8} {'jobs/s':>10} {'jobs/s per replica':>19} {'ratio to baseline':>18}"
        )
        for instant in (True, False):
            for count in args.replicas:
                replicas = start_replicas(server.url, count, instant, Path(tmp) / "logs")
                try:
                    await job_rate(
                        server.url, Limits(min(16, args.count), 5, args.in_flight), args.size
                    )  # warm-up
                    rate = await job_rate(server.url, limits, args.size)
                finally:
                    for replica in replicas:
                        replica.stop()
                mode = "instant" if instant else "normal"
                print(f"{mode:<8} {count:>8} {rate:>10.1f} {rate / count:>19.1f} {rate / base:>18.4f}")


if __name__ == "__main__":
    asyncio.run(main())
