"""The generator's HTTP pool while it waits on many predictions: CPU of the client, one httpcore pool
of ``--connections`` against the ShardedTransport (pools of 64) of the same capacity.

A local HTTP server in its own process (uvicorn, so that its CPU is not the client's) holds ``--held``
requests open (as Replicate holds ``Prefer: wait`` creates) while the client sends ``--short``
short requests, ``--short-concurrency`` at a time (as polls and downloads); then the held ones are
released. Reported: the client process's CPU seconds and the wall time of each variant, in the same
run (baseline: the single pool, as the generator had it), best of ``--repeat``.

    python bench/http_pool.py [--held 400] [--short 1000] [--short-concurrency 24]
                              [--connections 1040] [--repeat 1]

The defaults keep the baseline near 30 s: with 1,000 held and 2,000 short requests one pool took
more than 500 s of wall time (the run was stopped there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from imagegen_generator.providers.http_pool import ShardedTransport
from imagegen_testing.net import free_port, wait_for_port

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class HoldingServer:
    """ASGI app: ``/hold`` answers once ``/release`` was called; ``/count`` says how many are held."""

    def __init__(self) -> None:
        self.held = 0
        self.released = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        body = b"{}"
        if path == "/hold":
            self.held += 1
            await self.released.wait()
            self.held -= 1
        elif path == "/release":
            self.released.set()
        elif path == "/reset":
            self.released = asyncio.Event()
        elif path == "/count":
            body = str(self.held).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})


def serve(port: int) -> None:
    import uvicorn  # noqa: PLC0415 - only the server process needs it

    uvicorn.run(
        HoldingServer(), host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096
    )


async def measure(
    name: str, transport: httpx.AsyncBaseTransport, url: str, *, held: int, short: int, concurrency: int
) -> tuple[float, float]:
    """CPU seconds of this process and wall seconds of one run through ``transport``."""
    # No timeout: the held requests wait for the release, however slow the client is.
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=None) as http:
        await http.get("/reset")
        cpu, wall = time.process_time(), time.perf_counter()
        holding = [asyncio.create_task(http.get("/hold")) for _ in range(held)]
        while int((await http.get("/count")).text) < held:
            await asyncio.sleep(0.05)
        queue = iter(range(short))

        async def worker() -> None:
            for _ in queue:
                (await http.get("/short")).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await http.get("/release")
        for response in await asyncio.gather(*holding):
            response.raise_for_status()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"  {name:<38} client CPU {cpu:6.2f} s   wall {wall:6.2f} s", flush=True)
    return cpu, wall


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--held", type=int, default=400)
    parser.add_argument("--short", type=int, default=1000)
    parser.add_argument("--short-concurrency", type=int, default=24)
    parser.add_argument("--connections", type=int, default=1040)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.held + args.short_concurrency > args.connections:
        parser.error("--held + --short-concurrency must fit in --connections")

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_for_port("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        print(
            f"{args.held} held requests + {args.short} short ones ({args.short_concurrency} at a time), "
            f"capacity {args.connections} connections; pid {os.getpid()}",
            flush=True,
        )
        limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
        single: list[float] = []
        sharded: list[float] = []
        run = {"held": args.held, "short": args.short, "concurrency": args.short_concurrency}
        for repeat in range(args.repeat):
            # Alternately first: the first run of the process also pays for warming up.
            for variant in ("single", "sharded") if repeat % 2 == 0 else ("sharded", "single"):
                if variant == "single":
                    one_pool = httpx.AsyncHTTPTransport(limits=limits)
                    single.append((await measure("baseline: one pool", one_pool, url, **run))[0])
                else:
                    shards = ShardedTransport(args.connections)
                    label = f"ShardedTransport ({len(shards.in_flight)} pools of {shards.shard_size})"
                    sharded.append((await measure(label, shards, url, **run))[0])
        best_single, best_sharded = min(single), min(sharded)
        print(
            f"best client CPU: one pool {best_single:.2f} s, sharded {best_sharded:.2f} s "
            f"({best_single / best_sharded:.1f}x less)"
        )
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
    else:
        asyncio.run(main())
