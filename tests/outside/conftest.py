"""Fixtures of the outside tests: Node.js, the npm tools pinned in ``ts-client/package-lock.json``
(installed by ``make setup``), and a proxy that adds a bearer token for tools that cannot send one.

Missing Node.js or npm skips these tests with the reason, except under ``CI=true`` where it fails
them: CI must exercise the clients users have.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from imagegen_testing.net import free_port
from imagegen_testing.stack import RunningStack, start_stack

TS_CLIENT = Path(__file__).parent / "ts-client"
# The conformance runner and the Inspector need a newer Node.js than the SDK does; when the
# machine's is older, the one npm installed from ``node-linux-*`` in ts-client is used.
TOOLS_NODE = (22, 19)


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI=true the outside tests must run")
    pytest.skip(message)


def node_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True, timeout=30)
    match = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    assert match, f"unexpected `{binary} --version`: {out.stdout!r}"
    return int(match[1]), int(match[2])


@pytest.fixture(scope="session")
def outside_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One whole stack (local provider) for all the outside tests of a worker: each test makes
    accounts of its own, and nothing here changes the stack, so they need no more."""
    running = start_stack(tmp_path_factory.mktemp("outside-stack"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def node() -> str:
    """The machine's ``node``, as a user of the TypeScript SDK runs it."""
    found, npm = shutil.which("node"), shutil.which("npm")
    if found is None or npm is None:
        unavailable("Node.js and npm are not on the PATH (the outside tests run MCP clients written in JS)")
    return found


@pytest.fixture(scope="session")
def ts_client(node: str) -> Path:
    """The npm project of the outside tests (package.json, package-lock.json, client.mjs)."""
    if not (TS_CLIENT / "node_modules" / ".package-lock.json").exists():
        pytest.fail(f"the npm packages of {TS_CLIENT} are not installed: run `make setup`")
    return TS_CLIENT


@pytest.fixture(scope="session")
def tools_node(node: str, ts_client: Path) -> str:
    """A ``node`` >= 22.19 for the conformance runner and the Inspector: the machine's when new
    enough, otherwise the one npm installed into ts-client from ``node-linux-*``."""
    for candidate in (node, str(ts_client / "node_modules" / ".bin" / "node")):
        if Path(candidate).exists() and node_version(candidate) >= TOOLS_NODE:
            return candidate
    unavailable(
        f"no Node.js >= {TOOLS_NODE[0]}.{TOOLS_NODE[1]} for the conformance runner and the Inspector "
        "(ts-client installs one only on Linux x64/arm64)"
    )


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies until end of file."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class BearerProxy:
    """A TCP proxy to ``upstream`` (``host:port``) that adds ``Authorization: Bearer <token>`` to
    each request, for clients that cannot send a header of their own.

    It works on bytes: the request head gets the token (and ``Connection: close``, so that every
    connection carries one request), everything else passes through untouched, streams included.
    A parsing proxy would normalise what the client sent (header whitespace, for one) and hide
    how the gateway itself treats it.
    """

    def __init__(self, upstream: str, token: str) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self.token = token.encode()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bearer-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        writers = [client_writer]
        try:
            head = await client_reader.readuntil(b"\r\n\r\n")
            request_line, *fields = head[:-4].split(b"\r\n")
            dropped = (b"authorization:", b"connection:", b"keep-alive:")
            fields = [f for f in fields if not f.lower().startswith(dropped)]
            fields += [b"Authorization: Bearer " + self.token, b"Connection: close"]
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            writers.append(upstream_writer)
            upstream_writer.write(b"\r\n".join([request_line, *fields]) + b"\r\n\r\n")
            # Whichever side ends first ends both: the answer is complete (the gateway closes after
            # it), or the client went away (so the gateway sees the disconnect).
            pipes = {
                asyncio.ensure_future(pipe(client_reader, upstream_writer)),
                asyncio.ensure_future(pipe(upstream_reader, client_writer)),
            }
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pipes:
                    task.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()

    def __enter__(self) -> BearerProxy:
        self._thread.start()
        start = asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


NodeTool = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def node_tool(tools_node: str, ts_client: Path, tmp_path: Path) -> NodeTool:
    """``node_tool(script, *args)`` runs an installed package's ``script`` (relative to ts-client)
    with ``tools_node`` and a throwaway HOME, and returns the completed process.

    No OS keychain here: the Inspector is told to keep secrets in memory instead of warning.
    """
    home = tmp_path / "node-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "MCP_INSPECTOR_SECRET_STORE": "memory", "FORCE_COLOR": "0"}

    def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tools_node, str(script), *args],
            cwd=ts_client,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    return run


@pytest.fixture
def bearer_proxy() -> Iterator[Callable[[str, str], str]]:
    """``bearer_proxy(gateway_url, token)`` starts a BearerProxy and returns its URL; all are
    stopped after the test."""
    with contextlib.ExitStack() as proxies:

        def start(upstream: str, token: str) -> str:
            return proxies.enter_context(BearerProxy(upstream, token)).url

        yield start
