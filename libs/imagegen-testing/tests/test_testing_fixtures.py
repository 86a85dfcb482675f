from __future__ import annotations

import asyncpg
import nats

from imagegen_testing.nats_server import NatsServer


async def test_nats_server_fixture_has_jetstream_and_survives_a_restart(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="T", subjects=["t.>"])
    await js.publish("t.1", b"x")
    await nc.close()
    nats_server.stop()
    nats_server.start()
    nc = await nats.connect(nats_server.url)
    info = await nc.jetstream().stream_info("T")
    assert info.state.messages == 1
    await nc.close()


async def test_postgres_url_is_an_empty_database_of_its_own(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables == []
        assert (await conn.fetchval("SELECT current_database()")).startswith("imagegen_test_")
    finally:
        await conn.close()
