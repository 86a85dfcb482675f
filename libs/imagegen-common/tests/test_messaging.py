"""The messaging module against a real nats-server: connect, SlotPuller and the back-off policy."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import SecretStr

from imagegen_common import nats_names
from imagegen_common.messaging import (
    HANDLER_BACKOFF,
    Backoff,
    SlotPuller,
    connect,
    retry_forever,
)
from imagegen_common.nats_auth import Role
from imagegen_testing import eventually
from imagegen_testing.nats_server import NatsServer


def test_backoff_doubles_from_the_first_delay_up_to_its_cap() -> None:
    backoff = Backoff(first_seconds=1.0, max_seconds=10.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(0) == 1.0  # a message without delivery count is a first delivery
    assert HANDLER_BACKOFF.delay(1) == 1.0
    assert HANDLER_BACKOFF.delay(100) == 60.0


async def test_retry_forever_retries_a_failing_step_with_the_backoff() -> None:
    calls = 0

    async def step() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not yet")
        return "done"

    assert await retry_forever(step, what="a step", backoff=Backoff(0.01, 0.02)) == "done"
    assert calls == 3


async def test_connect_names_the_client_and_takes_the_server_list_as_configured(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "nats", monitor=True) as server:
        # The setting's shape: comma-separated, spaces allowed; a server that is down is skipped.
        nc = await connect(f" nats://127.0.0.1:1 , {server.url}", name=nats_names.BILLING_CLIENT)
        try:
            assert nc.is_connected
            assert nc.options["max_reconnect_attempts"] == -1  # never gives up

            def connection_names() -> list[str]:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz") as answer:
                    return [c.get("name", "") for c in json.load(answer)["connections"]]

            assert await asyncio.to_thread(connection_names) == [nats_names.BILLING_CLIENT]
        finally:
            await nc.close()


async def test_connect_waits_for_a_late_server_and_logs_an_outage_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="imagegen_common.messaging")

    def failed_attempts() -> int:
        return [r.getMessage() for r in caplog.records].count("NATS connection attempt failed")

    server = NatsServer(store_dir=tmp_path / "nats")  # its port is chosen, nothing listens yet
    try:
        connecting = asyncio.create_task(
            connect(server.url, name=nats_names.GENERATOR_CLIENT, reconnect_wait_seconds=0.05)
        )
        # Several failed attempts (each a debug line), which must not log the outage again.
        await eventually(lambda: failed_attempts() >= 3, what="three failed attempts")
        assert not connecting.done()
        server.start()
        nc = await asyncio.wait_for(connecting, timeout=30)
        try:
            messages = [r.getMessage() for r in caplog.records]
            assert messages.count("NATS unreachable, retrying") == 1
            assert messages.count("NATS reconnected") == 1  # the start-up's outage is over

            caplog.clear()
            server.stop()  # an outage after connecting: one line, then one when it is back
            await eventually(lambda: not nc.is_connected, what="the disconnect")
            await eventually(lambda: failed_attempts() >= 3, what="three failed reconnects")
            server.start()
            # nats-py runs its callbacks in tasks of their own: wait for the line, not the state.
            await eventually(lambda: "NATS reconnected" in caplog.text, what="the reconnect logged")
            assert nc.is_connected
            messages = [r.getMessage() for r in caplog.records]
            # nats-py reports the lost connection as an error or a disconnect, whichever comes first.
            outage = {"NATS unreachable, retrying", "NATS disconnected, reconnecting"}
            assert len([m for m in messages if m in outage]) == 1
            assert messages.count("NATS reconnected") == 1
        finally:
            await nc.close()
        # Closing on purpose is no outage.
        assert "NATS disconnected, reconnecting" not in caplog.text.split("NATS reconnected")[-1]
    finally:
        server.close()


async def test_connect_refuses_an_empty_server_list() -> None:
    with pytest.raises(ValueError):
        await connect(" , ", name=nats_names.GENERATOR_CLIENT)


async def _work_queue(nc: Client, count: int) -> JetStreamContext.PullSubscription:
    js = nc.jetstream()
    await js.add_stream(name="WORK", subjects=["work.>"])
    await js.add_consumer("WORK", ConsumerConfig(durable_name="workers", ack_wait=30))
    for i in range(count):
        await js.publish("work.item", str(i).encode())
    return await js.pull_subscribe_bind(durable="workers", stream="WORK")


async def test_a_slot_puller_never_holds_more_than_its_free_slots(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="test")
    try:
        sub = await _work_queue(nc, 20)
        js = nc.jetstream()
        handling: list[Msg] = []
        done: list[Msg] = []
        release = asyncio.Queue[None]()
        most_held = 0

        async def handle(msg: Msg) -> None:
            nonlocal most_held
            handling.append(msg)
            info = await js.consumer_info("WORK", "workers")
            most_held = max(most_held, info.num_ack_pending)
            await release.get()
            # Confirmed by the server before the slot is free: its count never lags behind ours.
            await msg.ack_sync()
            handling.remove(msg)
            done.append(msg)

        def done_at_least(count: int) -> Callable[[], bool]:
            return lambda: len(done) >= count

        puller = SlotPuller(sub, handle, concurrency=3, fetch_timeout=0.2, name="test")
        puller.start()
        for _ in range(20):
            await eventually(lambda: len(handling) == min(3, 20 - len(done)), what="three handlers")
            info = await js.consumer_info("WORK", "workers")
            assert info.num_ack_pending <= 3
            release.put_nowait(None)
            await eventually(done_at_least(len(done) + 1), what="a handler to finish")
        assert most_held <= 3
        assert await puller.stop(drain_timeout=1.0) == 0
    finally:
        await nc.close()


async def test_a_slot_puller_hands_back_on_stop_so_they_are_redelivered_at_once(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, name="test")
    try:
        sub = await _work_queue(nc, 10)
        js = nc.jetstream()
        started: list[Msg] = []
        finish = asyncio.Event()

        async def handle(msg: Msg) -> None:
            started.append(msg)
            try:
                await finish.wait()
            except asyncio.CancelledError:
                await msg.nak()
                raise
            await msg.ack()

        puller = SlotPuller(sub, handle, concurrency=3, fetch_timeout=0.2, name="test")
        puller.start()
        await eventually(lambda: len(started) == 3, what="three handlers")
        info = await js.consumer_info("WORK", "workers")
        assert info.num_ack_pending == 3  # nothing fetched beyond the three being worked on
        assert await puller.stop(drain_timeout=0.05) == 3
        # handed back, not left to their 30 s ack wait: another worker gets all ten at once
        again: list[Msg] = []
        async with asyncio.timeout(5):
            while len(again) < 10:  # a fetch may answer with part of a batch
                again += await sub.fetch(batch=10 - len(again), timeout=5)
        assert sorted(m.metadata.num_delivered for m in again) == [1] * 7 + [2] * 3
    finally:
        await nc.close()


async def test_a_slot_puller_lets_handlers_in_flight_finish_within_the_drain_timeout(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, name="test")
    try:
        sub = await _work_queue(nc, 2)
        acked: list[bytes] = []
        started = asyncio.Event()

        async def handle(msg: Msg) -> None:
            started.set()
            await asyncio.sleep(0.1)
            await msg.ack()
            acked.append(msg.data)

        puller = SlotPuller(sub, handle, concurrency=1, fetch_timeout=0.2, name="test")
        puller.start()
        await started.wait()
        assert await puller.stop(drain_timeout=5.0) == 0
        assert acked  # the one in hand finished; the other was never fetched, or handed back

        async def nothing_held() -> bool:
            # The server takes an ack or a nak in on its own time: poll rather than look once.
            info = await nc.jetstream().consumer_info("WORK", "workers")
            return bool(info.num_ack_pending == 0)

        await eventually(nothing_held, timeout=5, what="nothing held")
    finally:
        await nc.close()


async def test_a_service_connects_with_its_nats_user_and_its_password_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = {role: f"pw-{role.value}-{'x' * 24}" for role in Role}
    caplog.set_level(logging.DEBUG, logger="imagegen_common.messaging")
    with NatsServer(store_dir=tmp_path / "nats", passwords=passwords) as server:
        nc = await connect(
            server.url,
            name=nats_names.BILLING_CLIENT,
            user="billing",
            password=SecretStr(passwords[Role.BILLING]),
        )
        await nc.close()
        # A refused password is retried like an outage (a rotation may reach NATS later)…
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                connect(
                    server.url,
                    name="x",
                    user="billing",
                    password=passwords[Role.GATEWAY],
                    reconnect_wait_seconds=0.05,
                ),
                timeout=1.0,
            )
    # …and neither password reaches a log line or its fields.
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "NATS unreachable" in logged
    assert all(password not in logged for password in passwords.values())


async def test_a_password_without_a_user_is_refused() -> None:
    with pytest.raises(ValueError, match="without a user"):
        await connect("nats://127.0.0.1:1", name="x", password="orphan")
