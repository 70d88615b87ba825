"""Two lobby replicas on one PostgreSQL: a session deadline fires once, every device is told once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from sonalyze.lobby.main import create_app as create_lobby
from tests.lobby.conftest import full_stack
from tests.lobby.test_flows import DEVICES, HOST, _measuring_lobby, phones
from sonalyze.services import SERVICES
from tests.support.servers import ThreadedServer

pytestmark = [pytest.mark.postgres]


async def test_a_deadline_fires_once_across_two_replicas(postgres_url: str, tmp_path: Path):
    with full_stack(postgres_url, tmp_path, session_host_timeout_s=1.5, timer_interval_s=0.02) as stack:
        # A second replica on the same database, its timer as eager as the first one's.
        with ThreadedServer(create_lobby(stack.settings), **SERVICES["lobby"].uvicorn_options):
            async with phones(stack.gateway.ws_url, DEVICES) as p:
                room = await _measuring_lobby(p)
                session = await p[HOST].call("measurement.create_session", {"lobby_id": room["lobby_id"]})
                for device in DEVICES:
                    failed = await p[device].wait_push("measurement.session_failed", timeout_s=15)
                    assert failed["session_id"] == session["session_id"] and failed["code"] == "step_timeout"
                # both timers have run many times since (every 20 ms): a second firing would be here by now
                settle_until = time.monotonic() + 1.0
                while time.monotonic() < settle_until:
                    await asyncio.sleep(0.05)
                for device in DEVICES:
                    assert p[device].count("measurement.session_failed", session_id=session["session_id"]) == 1
                    assert p[device].count("measurement.session_ended", session_id=session["session_id"]) <= 1


async def test_a_claimed_lobby_is_passed_over_while_another_transaction_holds_it(postgres_url: str):
    from sqlalchemy.ext.asyncio import create_async_engine

    from sonalyze.lobby import migrations, store

    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(migrations.upgrade)
            await connection.execute(
                store.lobbies.insert().values(
                    id="L1", code="ABCDEFGH", name="Hall", status="open", host_device_id="host",
                    last_seq=0, created_s=0.0, updated_s=0.0,
                )
            )
        async with engine.connect() as holder, engine.connect() as timer:
            await holder.begin()
            assert (await holder.run_sync(store.get_lobby, "L1", lock=True)).id == "L1"
            await timer.begin()
            assert await timer.run_sync(store.claim_lobby, "L1") is None  # held: passed over, not waited for
            await timer.rollback()
            await holder.commit()
            await timer.begin()
            assert (await timer.run_sync(store.claim_lobby, "L1")).id == "L1"
            await timer.rollback()
    finally:
        await engine.dispose()


async def test_an_analysis_whose_replica_stopped_renewing_is_claimed_once(postgres_url: str):
    """The replica awaiting an analysis holds the session's lease; while it renews nobody takes it, once it
    lapses one of two claiming replicas gets it, and the former runner's late renewal changes nothing."""
    from sqlalchemy import update
    from sqlalchemy.ext.asyncio import create_async_engine

    from sonalyze.lobby import migrations, store
    from sonalyze.lobby.session_machine import StepTimeouts, new_session

    lease_s = 10.0
    engine = create_async_engine(postgres_url)

    async def run(work):
        async with engine.begin() as connection:
            return await connection.run_sync(work)

    def claim(runner: str, now_s: float):
        return lambda conn: store.claim_lapsed_analyses(conn, runner=runner, now_s=now_s, until_s=now_s + lease_s, exclude=set())

    def lease_row(conn):
        return conn.execute(store.sessions.select().with_only_columns(store.sessions.c.runner, store.sessions.c.lease_until_s)).one()

    try:
        async with engine.begin() as connection:
            await connection.run_sync(migrations.upgrade)
        state = new_session(
            session_id="S1", lobby_id="L1", job_id="J1", speakers=["spk"], microphones=["mic"], now_s=0.0, timeouts=StepTimeouts()
        ).state

        def analyzing_session(conn) -> None:
            store.insert_lobby(conn, lobby_id="L1", code="ABCDEFGH", name=None, host_device_id="spk", now_s=0.0)
            store.insert_session(conn, state, now_s=0.0)
            conn.execute(update(store.sessions).values(step="analyzing"))  # a row from before migration 0007: no lease

        await run(analyzing_session)
        assert [s.session_id for s in await run(claim("a", 100.0))] == ["S1"]  # no lease yet: claimable
        assert await run(claim("b", 105.0)) == []  # a's lease holds
        await run(lambda conn: store.renew_analyses(conn, ["S1"], runner="a", until_s=115.0))
        assert await run(claim("b", 112.0)) == []  # renewed
        claims = await asyncio.gather(run(claim("b", 120.0)), run(claim("c", 120.0)))  # a stopped renewing
        assert sorted(len(claimed) for claimed in claims) == [0, 1]
        winner = "b" if claims[0] else "c"
        await run(lambda conn: store.renew_analyses(conn, ["S1"], runner="a", until_s=999.0))  # a, late
        assert tuple(await run(lease_row)) == (winner, 130.0)
        await run(lambda conn: store.renew_analyses(conn, ["S1"], runner=winner, until_s=None))  # the winner stops
        assert [s.session_id for s in await run(claim("a", 121.0))] == ["S1"]  # handed over at once
        await run(lambda conn: conn.execute(update(store.sessions).values(step="completed")))
        assert await run(claim("b", 1000.0)) == []  # no analysis to await
    finally:
        await engine.dispose()
