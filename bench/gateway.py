"""Gateway throughput and latency: ``generate_image`` calls per second and p50/p99 latency through
the whole path (MCP over HTTP, auth, gRPC quote/reserve, NATS, generator, object store, outcome,
credits), at 1, 16 and 64 concurrent clients, each an official Python SDK client with an account
of its own, 127.0.0.1 only.

The path runs twice: with the local provider as users get it (each image drawn and encoded), and in
its instant mode (``IMAGEGEN_LOCAL_PROVIDER_INSTANT=true``: pre-encoded images of the requested
size, so what is measured is our own path).

Baseline, measured in the same run with the same clients: a bare MCP server (same SDK, stateless
Streamable HTTP with SSE answers, served by uvicorn in a process of its own) with one tool that
returns a small dict at once. The ratios say what our path costs on top of the MCP transport itself.

Each measurement stops after ``--count`` calls or ``--seconds``, whichever comes first; every client
connects and makes one call before the clock starts. Under each row, the CPU time each process spent
per call while the clock ran (Linux): unlike rates and latencies it hardly moves when the machine
is busy with something else, so it is the number to compare between runs. ``--profile DIR`` also
records py-spy (when on the PATH, or given with ``--py-spy``) on the gateway, billing and generator
during the instant-mode run at ``--profile-clients`` clients, and prints where each spends its time.

    python bench/gateway.py [--concurrency 1 16 64] [--count 1000] [--seconds 8] [--size 512]
                            [--modes local instant] [--era auto|legacy] [--database sqlite|postgres]
                            [--profile DIR [--profile-clients 16] [--py-spy PATH]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import quantiles
from typing import Any

from mcp import Client

from imagegen_testing import postgres
from imagegen_testing.mcp import mcp_client
from imagegen_testing.net import free_port, wait_for_port
from imagegen_testing.stack import RunningStack, start_stack

CREDITS_PER_CALL = 2  # nano-banana at 512x512 (5 credits per megapixel, rounded up)


# --- the bare server -----------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """A bare MCP server: the SDK's low-level Server and stateless Streamable HTTP transport, as the
    gateway mounts them (no host check, SSE answers for clients that accept them), one tool."""
    import uvicorn
    from mcp import types
    from mcp.server import Server, ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    result_schema = {
        "type": "object",
        "properties": {
            "image_url": {"type": "string"},
            "image_id": {"type": "string"},
            "credits_used": {"type": "integer"},
            "credits_remaining": {"type": "integer"},
        },
        "required": ["image_url", "image_id", "credits_used", "credits_remaining"],
    }
    body = {
        "image_url": "http://127.0.0.1/images/img_bench.png",
        "image_id": "img_bench",
        "credits_used": CREDITS_PER_CALL,
        "credits_remaining": 100,
    }

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tool = types.Tool(
            name="generate_image",
            input_schema={"type": "object", "properties": {"prompt": {"type": "string"}}},
            output_schema=result_schema,
        )
        return types.ListToolsResult(tools=[tool])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return types.CallToolResult(content=[types.TextContent(text=str(body))], structured_content=body)

    server: Server[Any] = Server("bare", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(
        app=server,
        stateless=True,
        json_response=False,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    class Endpoint:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await manager.handle_request(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(
        routes=[Route("/api/mcp", endpoint=Endpoint(), methods=["GET", "POST", "DELETE"])], lifespan=lifespan
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, server_header=False
    )
    uvicorn.Server(config).run()


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """The bare server's URL and process id."""
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)])
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}/api/mcp", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- measuring -----------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Limits:
    count: int
    seconds: float


@dataclass(frozen=True)
class Result:
    calls: int
    seconds: float
    latencies: list[float]
    errors: Counter[str]
    cpu: dict[str, float]  # CPU seconds per process while the clock ran

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return quantiles(self.latencies, n=100, method="inclusive")[p - 1]


async def measure(
    url: str,
    tokens: list[str],
    arguments: dict[str, Any],
    limits: Limits,
    *,
    mode: str = "auto",
    processes: dict[str, int] | None = None,
) -> Result:
    """``len(tokens)`` clients, one per token, calling ``generate_image`` in a loop; the clock starts
    once every client is connected and has made one call."""
    numbers = itertools.count()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    warm: list[Client] = []
    go = asyncio.Event()
    started = deadline = 0.0
    finished: list[float] = []
    processes = {**(processes or {}), "clients": os.getpid()}
    cpu_before: dict[str, float] = {}

    async def call(client: Client, record: bool = True) -> None:
        before = time.perf_counter()
        result = await client.call_tool("generate_image", arguments)
        elapsed = time.perf_counter() - before
        if result.is_error:
            errors[str(result.content[0])[:120]] += 1
        elif record:
            latencies.append(elapsed)

    async def worker(token: str) -> None:
        nonlocal started, deadline
        async with mcp_client(url, token, mode) as client:  # entered and left in this task, as anyio wants
            await call(client, record=False)
            warm.append(client)
            if len(warm) == len(tokens):
                cpu_before.update({name: cpu_seconds(pid) for name, pid in processes.items()})
                started = time.perf_counter()
                deadline = started + limits.seconds
                go.set()
            await go.wait()
            while time.perf_counter() < deadline and next(numbers) < limits.count:
                await call(client)
            finished.append(time.perf_counter())

    await asyncio.gather(*(worker(token) for token in tokens))
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
    return Result(len(latencies), max(finished) - started, latencies, errors, cpu)


# --- profiling -----------------------------------------------------------------------------------


@dataclass
class Profiler:
    py_spy: str
    out_dir: Path
    rate: int = 200

    @contextlib.contextmanager
    def recording(self, stack: RunningStack, label: str) -> Iterator[None]:
        """py-spy on each service process while the block runs; raw (collapsed) stacks per process."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for child in stack.stack.children:
            out = self.out_dir / f"{label}-{child.name}.txt"
            command = [self.py_spy, "record", "--pid", str(child.pid), "--rate", str(self.rate)]
            # --gil: only the thread holding the GIL is sampled. Without it, threads blocked in C
            # (epoll, a queue's get, a lock) count as busy on kernels where py-spy cannot tell idle.
            command += ["--format", "raw", "--output", str(out), "--nonblocking", "--threads", "--gil"]
            spies.append((child.name, out, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
        time.sleep(1)  # let py-spy attach before the load starts
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            for _, _, spy in spies:
                spy.send_signal(signal.SIGINT)
            for _, _, spy in spies:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
            for name, out, _ in spies:
                if out.exists():
                    print(summarise_profile(name, out, seconds, self.rate))

    @staticmethod
    def available(path: str | None) -> str | None:
        return path or shutil.which("py-spy")


def summarise_profile(name: str, raw: Path, seconds: float, rate: int, top: int = 14) -> str:
    """The busiest functions of one process from py-spy's collapsed stacks: how much was sampled
    active (py-spy leaves idle threads out, though a thread blocked in C can still count), and for
    each function the share of those samples with it on the stack (inclusive) and on top (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        busy += count
        threads[re.sub(r"^thread \(\w+\):? ?", "", thread) or "?"] += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1] if frames else thread] += count
    cores = busy / (rate * seconds)
    by_thread = ", ".join(f"{t} {100 * n / busy:.0f}%" for t, n in threads.most_common(4)) if busy else ""
    lines = [
        f"--- {name}: {cores:.2f} cores sampled active ({busy} samples; threads: {by_thread}) [{raw.name}]"
    ]
    if busy:
        lines.append("  self%  incl%  function")
        lines += [
            f"  {100 * count / busy:5.1f}  {100 * inclusive[frame] / busy:5.1f}  {frame}"
            for frame, count in own.most_common(top)
        ]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------------


def header() -> str:
    return (
        f"{'target':<9} {'clients':>7} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f"   {'vs bare: rate':>13} {'p50':>6}  errors"
    )


def row(target: str, clients: int, result: Result, bare: Result | None) -> str:
    p50, p99 = 1000 * result.percentile(50), 1000 * result.percentile(99)
    versus = ""
    if bare is not None:
        versus = f"{result.rate / bare.rate:12.2f}x {p50 / (1000 * bare.percentile(50)):5.1f}x"
    errors = ", ".join(f"{n} x {e}" for e, n in result.errors.most_common(2)) or "-"
    cpu = ", ".join(
        f"{name} {1000 * seconds / max(result.calls, 1):.1f}" for name, seconds in result.cpu.items()
    )
    return (
        f"{target:<9} {clients:>7} {result.calls:>6} {result.rate:8.1f} {p50:8.1f} {p99:8.1f}"
        f"   {versus:>20}  {errors}\n{'':<17}CPU ms per call: {cpu}"
    )


async def run_stack_levels(
    stack: RunningStack,
    target: str,
    *,
    arguments: dict[str, Any],
    limits: Limits,
    concurrencies: list[int],
    bare: dict[int, Result],
    profile: tuple[Profiler, int] | None,
    era: str,
) -> None:
    for clients in concurrencies:
        accounts = [stack.create_account(CREDITS_PER_CALL * (limits.count + 2)) for _ in range(clients)]
        tokens = [account.token for account in accounts]
        recording: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if profile is not None and profile[1] == clients:
            recording = profile[0].recording(stack, f"{target}-{clients}")
        with recording:
            processes = {child.name: child.pid for child in stack.stack.children}
            if stack.nats.process is not None:
                processes["nats"] = stack.nats.process.pid
            result = await measure(stack.mcp_url, tokens, arguments, limits, mode=era, processes=processes)
        print(row(target, clients, result, bare.get(clients)), flush=True)


@contextlib.contextmanager
def billing_database(kind: str) -> Iterator[str]:
    """Billing's database URL: empty for SQLite in the data dir (as ``imagegen dev`` runs), or a
    throwaway PostgreSQL database (as production runs)."""
    if kind == "sqlite":
        yield ""
        return
    why_not = postgres.reachable()
    if why_not is not None:
        raise SystemExit(f"--database postgres: {postgres.server_url()} is unreachable ({why_not})")
    with postgres.TemporaryDatabase() as database:
        yield database.url


async def main_async(args: argparse.Namespace, database_url: str) -> None:
    limits = Limits(args.count, args.seconds)
    arguments = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size}
    profiler = None
    if args.profile:
        py_spy = Profiler.available(args.py_spy)
        if py_spy is None:
            print("--profile: py-spy is not on the PATH (pip install py-spy, or pass --py-spy PATH)")
        else:
            profiler = (Profiler(py_spy, Path(args.profile)), args.profile_clients)

    print(
        f"generate_image {args.size}x{args.size}, at most {limits.count} calls or {limits.seconds:.0f}s each"
    )
    print(header(), flush=True)
    bare: dict[int, Result] = {}
    with bare_server() as (url, pid):
        for clients in args.concurrency:
            tokens = [f"t{i}" for i in range(clients)]
            bare[clients] = await measure(
                url, tokens, arguments, limits, mode=args.era, processes={"server": pid}
            )
            print(row("bare", clients, bare[clients], None), flush=True)

    for mode in args.modes:
        env = {"IMAGEGEN_LOCAL_PROVIDER_INSTANT": "true"} if mode == "instant" else {}
        if database_url:
            env["IMAGEGEN_DATABASE_URL"] = database_url
        with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
            stack = await asyncio.to_thread(start_stack, Path(tmp), 1, env)
            try:
                await run_stack_levels(
                    stack,
                    mode,
                    arguments=arguments,
                    limits=limits,
                    concurrencies=args.concurrency,
                    bare=bare,
                    profile=profiler if mode == "instant" else None,
                    era=args.era,
                )
            finally:
                await asyncio.to_thread(stack.stop)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients")
    parser.add_argument("--count", type=int, default=1000, help="most calls per measurement")
    parser.add_argument("--seconds", type=float, default=8.0, help="longest time per measurement")
    parser.add_argument("--size", type=int, default=512, help="side of the square images, in pixels")
    parser.add_argument("--modes", nargs="+", choices=["local", "instant"], default=["local", "instant"])
    parser.add_argument(
        "--era",
        choices=["auto", "legacy"],
        default="auto",
        help="clients' protocol era: auto (the SDK picks 2026-07-28, stateless) or legacy (the "
        "initialize handshake, as the TypeScript SDK 1.x and so Claude Code speak)",
    )
    parser.add_argument(
        "--database", choices=["sqlite", "postgres"], default="sqlite", help="billing's database"
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="record py-spy profiles of the instant-mode run here"
    )
    parser.add_argument("--profile-clients", type=int, default=16, help="the level to profile")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable (default: from the PATH)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    with billing_database(args.database) as database_url:  # both modes use it, with new accounts
        asyncio.run(main_async(args, database_url))


if __name__ == "__main__":
    main()
