"""Fault injection on a running stack (``stack.start_stack``) and the books every fault test checks
afterwards: balances equal ledger sums, nothing left reserved, every call a client saw succeed captured
exactly once with a working image, every call it saw fail not captured."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from imagegen.billing.v1.resources_pb2 import LedgerEntry
from imagegen_cli.dev import port_or_free
from imagegen_cli.processes import ChildProcess, ReadyCheck, grpc_serving, http_ok
from imagegen_gateway.generation import idempotent_job_id
from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.polling import eventually
from imagegen_testing.stack import Account, RunningStack

#: Long enough for a job's reservation to expire and the reaper to release it (a job of the fault
#: stack times out after 28 s, plus the grace), with room for a loaded machine.
BOOKS_TIMEOUT = 150.0

#: Settings of a fault stack: short job deadlines (shorter than NATS' former 30 s ack wait, so that a
#: job stranded that long would time out) and grace, a reaper and status checks every second, so
#: that whatever a fault leaves behind is settled within a minute; a checked token is trusted for an
#: hour, so that only the revocation broadcast can end it sooner.
FAULT_ENV = {
    "IMAGEGEN_JOB_TIMEOUT_SECONDS": "28",
    "IMAGEGEN_RESERVATION_GRACE_SECONDS": "5",
    "IMAGEGEN_BILLING_REAPER_INTERVAL_SECONDS": "1",
    "IMAGEGEN_PROGRESS_INTERVAL_SECONDS": "1",
    "IMAGEGEN_AUTH_CACHE_SECONDS": "3600",
}


@dataclass
class Call:
    """One generate_image call as its client saw it."""

    gateway_url: str
    key: str
    job_id: str
    #: True: an image; False: an error result; None: no answer at all (the connection broke).
    ok: bool | None = None
    image_url: str = ""
    text: str = ""


async def generate(
    gateway_url: str, account: Account, key: str | None = None, prompt: str = "a fault", timeout: float = 180
) -> Call:
    """One MCP generate_image call (with an idempotency key, so that its job id is known)."""
    key = key or secrets.token_hex(8)
    call = Call(gateway_url, key, idempotent_job_id(account.account_id, key))
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "generate_image",
            "arguments": {"prompt": prompt, "width": 512, "height": 512, "idempotency_key": key},
        },
    }
    headers = {"Authorization": f"Bearer {account.token}", "Accept": "application/json, text/event-stream"}
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(f"{gateway_url}/api/mcp", headers=headers, json=body)
    except httpx.HTTPError as error:
        call.text = repr(error)
        return call
    result = _tool_result(response)
    if result is None:
        call.text = response.text
        return call
    call.text = result["content"][0]["text"]
    call.ok = not result["isError"]
    if call.ok:
        image = json.loads(call.text)
        assert image["image_id"] == call.job_id, (image, call)
        call.image_url = image["image_url"]
    return call


async def calls_with_the_provider(
    gateway_url: str, fake: FakeReplicate, account: Account, count: int
) -> list[asyncio.Task[Call]]:
    """Starts ``count`` calls and returns once the provider is making every one of their images."""
    before = len(fake.creates)
    calls = [asyncio.create_task(generate(gateway_url, account)) for _ in range(count)]
    await eventually(lambda: len(fake.creates) >= before + count, what="every job with the provider")
    return calls


def _tool_result(response: httpx.Response) -> dict[str, Any] | None:
    """The call's result from a JSON or an event-stream answer (progress notifications come first);
    None when the stream ended without one (the gateway died mid-answer)."""
    if response.headers.get("content-type", "").startswith("application/json"):
        message = response.json()
        return message.get("result") if isinstance(message, dict) else None
    for line in response.text.splitlines():
        if line.startswith("data:"):
            message = json.loads(line[5:])
            if "result" in message:
                result: dict[str, Any] = message["result"]
                return result
    return None


def kill(stack: RunningStack, name: str) -> None:
    """kill -9 of a service process."""
    child = stack.stack.child(name)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


def live_generators(stack: RunningStack) -> list[str]:
    return [name for name in stack.generators if stack.stack.child(name).alive()]


def ensure_generators(stack: RunningStack, count: int) -> None:
    """At least ``count`` live generator replicas (a test before may have killed some)."""
    while len(live_generators(stack)) < count:
        stack.add_generator(f"generator-{secrets.token_hex(3)}")


def busy_generators(stack: RunningStack) -> list[str]:
    """The live replicas that run a job now (their ``imagegen_generator_jobs_in_flight`` gauge)."""
    busy = []
    for name in live_generators(stack):
        ops = stack.stack.child(name).env["IMAGEGEN_GENERATOR_OPS_LISTEN"]
        metrics = httpx.get(f"http://{ops}/metrics", timeout=10).text
        for line in metrics.splitlines():
            if line.startswith("imagegen_generator_jobs_in_flight ") and float(line.split()[1]) > 0:
                busy.append(name)
    return busy


def ready_check(child: ChildProcess) -> ReadyCheck:
    env = child.env
    if "IMAGEGEN_GATEWAY_LISTEN" in env and child.command[-1] == "gateway":
        return http_ok(f"http://{env['IMAGEGEN_GATEWAY_LISTEN']}/readyz")
    if child.command[-1] == "generator":
        return http_ok(f"http://{env['IMAGEGEN_GENERATOR_OPS_LISTEN']}/readyz")
    return grpc_serving(env["IMAGEGEN_BILLING_LISTEN"])


def restart(stack: RunningStack, name: str, wait_ready: bool = True) -> None:
    """Starts a dead service again, with the same command, environment, ports and log."""
    old = stack.stack.child(name)
    assert not old.alive(), f"{name} is still running"
    new = ChildProcess(name, old.command, old.env, log_path=old.log_path).start()
    stack.stack.children[stack.stack.children.index(old)] = new
    if wait_ready:
        new.wait_ready(ready_check(new), timeout=60)


def add_gateway(stack: RunningStack, name: str) -> str:
    """Another gateway replica on a port of its own; returns its base URL."""
    port = port_or_free(0)
    url = f"http://127.0.0.1:{port}"
    stack.stack.start_gateway("127.0.0.1", port, name=name)  # with the gateway's credentials
    return url


async def in_thread(function: Any, *args: Any) -> Any:
    """Runs a blocking helper (a restart, a kill) without stopping the calls in flight."""
    return await asyncio.to_thread(function, *args)


def check_books(stack: RunningStack, account: Account, calls: list[Call], live_gateway: str) -> None:
    """Waits until billing settled everything (outcome events, the reaper), then checks the books."""
    stack.wait_for(
        lambda: stack.account(account.account_id).account.reserved_credits == 0,
        timeout=BOOKS_TIMEOUT,
        what="every reservation settled",
    )
    ledger = stack.ledger(account.account_id)
    assert sum(e.amount for e in ledger) == stack.credits(account.account_id), ledger
    reserves = Counter(e.job_id for e in ledger if e.kind == LedgerEntry.KIND_RESERVE)
    captures = Counter(e.job_id for e in ledger if e.kind == LedgerEntry.KIND_CAPTURE)
    releases = Counter(e.job_id for e in ledger if e.kind == LedgerEntry.KIND_RELEASE)
    for job_id, held in reserves.items():  # each hold settled exactly once, one way
        assert held == 1 and captures[job_id] + releases[job_id] == 1, (job_id, ledger)
    for call in calls:
        if call.ok:
            assert captures[call.job_id] == 1, ("an image the client got was not charged once", call)
            path = call.image_url.split("/images/", 1)[1]
            image = httpx.get(f"{live_gateway}/images/{path}", timeout=30)
            assert image.status_code == 200 and image.content, (call, image.status_code)
        elif call.ok is False:
            assert captures[call.job_id] == 0, ("an error was charged", call)
