"""Thousands of waits: N ``generate_image`` calls at once against a provider that takes D seconds.

Real generations take 5–60 s at Replicate, so a busy deployment holds many MCP calls open at once.
This starts the whole stack (NATS, billing, one generator replica, ``--gateways`` gateways) with a
fake Replicate (a real HTTP server that the official ``replicate`` client talks to) whose predictions
take ``--delay`` seconds, then sends ``--calls`` MCP ``tools/call generate_image`` requests at once
(plain JSON-RPC over HTTP, spread over the gateways; one account, enough credits) and reports:

- how many succeeded, the errors by kind, wall time against the ideal (the provider's delay when the
  replica's concurrency covers every call, else delay × ⌈calls / concurrency⌉), p50/p99 latency;
- the peak RSS of each process (VmHWM) and its CPU time;
- what is still held afterwards (credits reserved and never settled; must be 0).

Baseline, in the same run: the same number of predictions sent straight to the fake Replicate at once
(``Prefer: wait``): what the provider alone takes, without our path. Neither side fetches the image
file: the baseline's client would fetch it from Replicate, an MCP client from imagegen.

The fake runs in a process of its own (its CPU is in the table), so that the bench's clients do not
share an interpreter with it; the clients spread their connections over pools of
``CLIENT_POOL_SIZE`` (one httpx pool walks all of its connections for every request, which costs
more CPU than the path measured once there are a thousand). The generator runs with the production
``Prefer: wait`` and polling settings, not the brisk ones the fake gives tests.

    python bench/long_wait.py [--calls 1000] [--delay 20] [--concurrency 1024] [--gateways 1]
                              [--database sqlite|postgres] [--size 512] [--output-size model|requested]
                              [--profile DIR [--py-spy PATH]] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import quantiles
from typing import Any

import httpx
from gateway import Profiler  # bench/gateway.py: this script's directory is on sys.path

from imagegen_cli.dev import port_or_free
from imagegen_testing import postgres
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.stack import RunningStack, start_stack

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Connections per httpx client of the bench's own callers.
CLIENT_POOL_SIZE = 64
#: The fake's settings that make tests poll briskly; the bench measures the generator's defaults.
TEST_ONLY_GENERATOR_ENV = ("IMAGEGEN_REPLICATE_WAIT_SECONDS", "IMAGEGEN_REPLICATE_POLL_INTERVAL_SECONDS")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Run:
    wall: float
    latencies: list[float]
    errors: Counter[str]

    @property
    def succeeded(self) -> int:
        return len(self.latencies)

    def percentile(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return quantiles(self.latencies, n=100, method="inclusive")[p - 1]


def _serve_fake(conn: multiprocessing.connection.Connection, delay: float, output_size: int | None) -> None:
    """The fake Replicate's process: serves until told to stop; ``reset`` clears what it recorded."""
    with FakeReplicate() as fake:
        fake.behaviour.delay_seconds = delay
        fake.behaviour.output_size = (output_size, output_size) if output_size else None
        conn.send((fake.url, fake.token, fake.generator_env()))
        while (command := conn.recv()) != "stop":
            if command == "reset":
                fake.reset()
                fake.behaviour.delay_seconds = delay
                fake.behaviour.output_size = (output_size, output_size) if output_size else None
            conn.send("ok")


class FakeProcess:
    """The fake Replicate in a process of its own."""

    def __init__(self, delay: float, output_size: int | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve_fake, args=(child, delay, output_size), name="fake-replicate", daemon=True
        )
        self.delay = delay

    def __enter__(self) -> FakeProcess:
        self.process.start()
        self.url, self.token, self.generator_env = self._conn.recv()
        return self

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self.process.join(timeout=15)
        if self.process.is_alive():
            self.process.kill()


@contextlib.asynccontextmanager
async def client_pools(calls: int, **options: Any) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Enough httpx clients of ``CLIENT_POOL_SIZE`` connections for ``calls`` requests at once."""
    limits = httpx.Limits(max_connections=CLIENT_POOL_SIZE, max_keepalive_connections=CLIENT_POOL_SIZE)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, **options))
            for _ in range(math.ceil(calls / CLIENT_POOL_SIZE))
        ]


async def baseline(fake: FakeProcess, calls: int, size: int) -> Run:
    """``calls`` predictions straight to the fake at once, each waiting for its result."""
    # Replicate holds a create 60 s at most; the bench's delays stay below that
    headers = {"Authorization": f"Bearer {fake.token}", "Prefer": f"wait={min(60, int(fake.delay) + 30)}"}
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    async with client_pools(calls, base_url=fake.url, timeout=600, headers=headers) as clients:

        async def one(number: int) -> None:
            started = time.perf_counter()
            reply = await clients[number % len(clients)].post(
                "/v1/models/google/nano-banana/predictions",
                json={"input": {"prompt": "a lighthouse", "width": size, "height": size}},
            )
            status = reply.json().get("status") if reply.status_code < 300 else None
            if status != "succeeded":
                errors[f"http {reply.status_code} {status}"] += 1
                return
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
    return Run(time.perf_counter() - started, latencies, errors)


def _error_kind(body: dict[str, Any]) -> str | None:
    """None for a success; else a short name of what went wrong."""
    if "error" in body:
        return f"jsonrpc {body['error'].get('code')}"
    result = body.get("result", {})
    if result.get("isError"):
        text = " ".join(c.get("text", "") for c in result.get("content", []))
        for kind in ("unavailable", "timeout", "insufficient", "failed"):
            if kind in text.lower():
                return f"tool error: {kind}: {text[:80]}"
        return f"tool error: other: {text[:80]}"
    return None


async def through_imagegen(urls: list[str], token: str, calls: int, size: int, timeout: float) -> Run:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    async with client_pools(calls, timeout=timeout, headers=headers) as clients:

        async def one(number: int) -> None:
            request = {
                "jsonrpc": "2.0",
                "id": number,
                "method": "tools/call",
                "params": {
                    "name": "generate_image",
                    "arguments": {"prompt": f"lighthouse {number}", "width": size, "height": size},
                },
            }
            started = time.perf_counter()
            try:
                reply = await clients[number % len(clients)].post(urls[number % len(urls)], json=request)
            except httpx.HTTPError as exc:
                errors[f"http {type(exc).__name__}"] += 1
                return
            if reply.status_code != 200:
                errors[f"http {reply.status_code}"] += 1
                return
            kind = _error_kind(reply.json())
            if kind is None:
                latencies.append(time.perf_counter() - started)
            else:
                errors[kind] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
    return Run(time.perf_counter() - started, latencies, errors)


@contextlib.contextmanager
def billing_database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        yield ""
        return
    why_not = postgres.reachable()
    if why_not:
        raise SystemExit(f"--database postgres: {postgres.server_url()} is unreachable ({why_not})")
    with postgres.TemporaryDatabase() as database:
        yield database.url


def held_credits(stack: RunningStack, account_id: str) -> int:
    return int(stack.account(account_id).account.reserved_credits)


def processes_of(stack: RunningStack, fake: FakeProcess) -> dict[str, int]:
    found = {child.name: child.pid for child in stack.stack.children}
    if stack.nats.process is not None:
        found["nats"] = stack.nats.process.pid
    if fake.process.pid is not None:
        found["fake-replicate (not ours)"] = fake.process.pid
    return found


def report(
    args: argparse.Namespace, base: Run, ours: Run, processes: dict[str, int], cpu: dict[str, float]
) -> None:
    waves = math.ceil(args.calls / args.concurrency)
    ideal = args.delay * waves
    print(
        f"\n{args.calls} calls at once, provider {args.delay:.0f} s, 1 generator × {args.concurrency} slots, "
        f"{args.gateways} gateway(s), {args.database}, {args.size}², provider output: {args.output_size} size"
    )
    print(f"{'':28}{'ok':>7}{'errors':>8}{'wall s':>9}{'× ideal':>9}{'p50 s':>8}{'p99 s':>8}")
    for name, run in (("baseline (fake alone)", base), ("imagegen (MCP)", ours)):
        print(
            f"{name:28}{run.succeeded:>7}{sum(run.errors.values()):>8}{run.wall:>9.1f}"
            f"{run.wall / ideal:>9.2f}{run.percentile(50):>8.1f}{run.percentile(99):>8.1f}"
        )
    for kind, count in ours.errors.most_common():
        print(f"  error {kind}: {count}")
    print(f"{'process':28}{'peak RSS MB':>12}{'CPU s':>8}")
    for name, pid in processes.items():
        print(f"{name:28}{peak_rss_mb(pid):>12.0f}{cpu.get(name, 0.0):>8.1f}")
    print(f"ratio to baseline wall time: {ours.wall / base.wall:.2f}")


async def main_async(args: argparse.Namespace, database_url: str) -> None:
    output = None if args.output_size == "model" else args.size
    with (
        FakeProcess(args.delay, output) as fake,
        tempfile.TemporaryDirectory(prefix="imagegen-bench-") as scratch,
    ):
        base = await baseline(fake, args.calls, args.size)
        fake.reset()
        env = {"IMAGEGEN_DATABASE_URL": database_url} if database_url else {}
        env["IMAGEGEN_JOB_TIMEOUT_SECONDS"] = str(int(args.delay * 3 + 60))
        generator_env = {
            **{k: v for k, v in fake.generator_env.items() if k not in TEST_ONLY_GENERATOR_ENV},
            "IMAGEGEN_GENERATOR_CONCURRENCY": str(args.concurrency),
            "IMAGEGEN_GENERATOR_DRAIN_TIMEOUT_SECONDS": "60",  # as deployed: Prefer: wait=60
        }
        # --keep DIR: the stack's files (its logs/ above all) stay there for a look afterwards
        tmp = Path(args.keep) if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        stack = await asyncio.to_thread(start_stack, tmp, 1, env, None, generator_env)
        try:
            urls = [stack.mcp_url]
            for i in range(1, args.gateways):
                port = port_or_free(0)
                stack.stack.start_gateway("127.0.0.1", port, name=f"gateway-{i}")
                urls.append(f"http://127.0.0.1:{port}/api/mcp")
            account = stack.create_account(credits=args.calls * 100)
            processes = processes_of(stack, fake)
            before = {name: cpu_seconds(pid) for name, pid in processes.items()}
            recording = (
                Profiler(args.py_spy or "py-spy", Path(args.profile)).recording(stack, "long-wait")
                if args.profile
                else contextlib.nullcontext()
            )
            with recording:
                ours = await through_imagegen(
                    urls, account.token, args.calls, args.size, args.delay * 3 + 120
                )
            cpu = {name: cpu_seconds(pid) - before[name] for name, pid in processes.items()}
            stack.wait_for(
                lambda: held_credits(stack, account.account_id) == 0, timeout=120, what="holds settled"
            )
            report(args, base, ours, processes, cpu)
            print(f"credits still held afterwards: {held_credits(stack, account.account_id)}")
            if args.json:
                print(
                    json.dumps({"succeeded": ours.succeeded, "errors": dict(ours.errors), "wall": ours.wall})
                )
        finally:
            await asyncio.to_thread(stack.stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=20.0, help="seconds each prediction takes")
    parser.add_argument(
        "--concurrency", type=int, default=256, help="the generator replica's job slots (its setting)"
    )
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--output-size",
        choices=["model", "requested"],
        default="model",
        help="the fake's images: the model's own size (1024 on the long side, which the generator "
        "resizes: about 35 ms of CPU each) or the requested size (kept byte for byte)",
    )
    parser.add_argument("--keep", metavar="DIR", help="keep the stack's files (logs/) in DIR")
    parser.add_argument("--json", action="store_true", help="also print a JSON summary line")
    parser.add_argument("--profile", metavar="DIR", help="record py-spy on every service process here")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable (default: from the PATH)")
    args = parser.parse_args()
    with billing_database(args.database) as database_url:
        asyncio.run(main_async(args, database_url))


if __name__ == "__main__":
    main()
