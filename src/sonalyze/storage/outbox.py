"""A writer's outbox: records bound for storage wait in the writer's own database until storage has them.

    outbox = Outbox("sqlite+aiosqlite:///data/outbox.db", StorageClient(storage_url))
    await outbox.start()                                   # creates the table, starts delivering
    async with session.begin():                            # the writer's own transaction ...
        session.add(lobby_row)
        await outbox.enqueue("lobbies", lobby_record, aggregate=lobby_id, session=session)
    ...                                                    # ... commits the record and its outbox row together
    await outbox.stop()

Delivery is ``PUT /v1/{resource}/{id}`` (or ``DELETE``), idempotent on the storage side, so a record
sent twice (storage stored it but the answer was lost) is stored once. Rows leave the outbox only
after storage acknowledged them. Records of one ``aggregate`` (by default the record itself; pass the
lobby id to keep a lobby's records in order) are delivered one after the other in enqueue order;
different aggregates go in parallel. Several replicas may deliver from one database: a replica first
claims a row with a lease (``claimed_by``, ``claimed_until_s``: one compare-and-set ``UPDATE``, atomic on
PostgreSQL and SQLite), so two replicas never send the same row, and an aggregate's next row is not due
before its head was acknowledged, so the order holds across replicas too. A replica that dies holding a
claim leaves it to the others once the lease (``lease_s``, longer than a storage call can take) runs out.
Failures that can heal (storage down, 5xx, 408/429, a parent
not there yet: ``missing_reference``) are retried with capped exponential back-off and jitter, forever;
other rejections (422 invalid record, 409 conflict) are kept as ``dead`` rows with the error and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from sonalyze.common.internal_auth import internal_headers
from sonalyze.common.json import dumps, loads
from sonalyze.storage.client import Record, StorageClient, StorageError, StorageUnavailable, check_resource, record_id_of
from sonalyze.storage.db import make_engine

logger = logging.getLogger("sonalyze.storage.outbox")

outbox_metadata = MetaData()
"""Holds only the outbox table: ``outbox_metadata.create_all`` or copy it into the writer's migrations."""

outbox_table = Table(
    "storage_outbox",
    outbox_metadata,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("operation", String(8), nullable=False),
    Column("resource", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("aggregate", String(200), nullable=False),
    Column("payload", JSON()),
    Column("state", String(8), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_s", Float, nullable=False),
    Column("last_error", Text),
    Column("created_s", Float, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until_s", Float),
    Index("ix_storage_outbox_state_aggregate_seq", "state", "aggregate", "seq"),
)


CREATE_LOCK_KEY = zlib.crc32(b"sonalyze.storage.outbox")
"""The PostgreSQL advisory lock :meth:`Outbox.create_table` holds while it creates or alters the table."""


class Operation(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


class RowState(enum.StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    """Storage refused the record for good; kept with ``last_error`` for a human to look at."""


def _pending_row(
    operation: Operation, resource: str, record_id: str, payload: Record | None, aggregate: str | None
) -> dict[str, Any]:
    now_s = time.time()
    return {
        "operation": operation.value,
        "resource": resource,
        "record_id": record_id,
        "aggregate": aggregate or f"{resource}:{record_id}",
        "payload": payload,
        "state": RowState.PENDING.value,
        "attempts": 0,
        "next_attempt_s": now_s,
        "created_s": now_s,
    }


def put_row(resource: str, record: Record, *, aggregate: str | None = None) -> dict[str, Any]:
    """The outbox row of ``PUT /v1/{resource}/{record["id"]}`` (the record as the JSON that will be sent).

    :meth:`Outbox.enqueue` inserts it; a writer whose transactions run on a synchronous connection (the
    lobby's) inserts it with ``insert(outbox_table)`` itself; delivery finds it on the next poll.
    """
    payload = loads(dumps(record))
    return _pending_row(Operation.PUT, check_resource(resource), record_id_of(record), payload, aggregate)


def retry_delay_s(attempts: int, *, base_s: float, max_s: float, jitter: float) -> float:
    """Capped exponential back-off with jitter: ``min(max_s, base_s·2^(attempts-1))·(0.5 + jitter/2)``.

    ``jitter`` in [0, 1) (a random draw) spreads retries of many writers so they do not arrive together.
    """
    exponential_s = base_s * 2.0 ** max(0, attempts - 1)
    return min(max_s, exponential_s) * (0.5 + 0.5 * jitter)


class Outbox:
    """Durable, ordered, retried delivery of records to storage from a writer's own database."""

    def __init__(
        self,
        database: str | AsyncEngine,
        client: StorageClient,
        *,
        batch_size: int = 100,
        max_in_flight: int = 8,
        poll_interval_s: float = 1.0,
        retry_base_s: float = 0.2,
        retry_max_s: float = 30.0,
        lease_s: float = 60.0,
        owns_client: bool = False,
    ) -> None:
        """``owns_client``: `stop` closes ``client`` too (its connections and replica checks)."""
        self._owns_engine = isinstance(database, str)
        self._owns_client = owns_client
        self.engine = make_engine(database) if isinstance(database, str) else database
        self.client = client
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex
        """Names this outbox's claims (one per process: a restarted replica does not reuse a dead one's)."""
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def create_table(self) -> None:
        """Create the outbox table if missing, add the claim columns to an older one (``start`` does it too).

        On PostgreSQL under an advisory lock: replicas starting together create it one after the other (each
        ``CREATE TABLE`` checks first, but two checks before either creation both find nothing)."""
        async with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK_KEY})
            await connection.run_sync(_create_or_add_claim_columns)

    async def enqueue(
        self,
        resource: str,
        record: Record,
        *,
        aggregate: str | None = None,
        session: AsyncSession | AsyncConnection | None = None,
    ) -> None:
        """Queue ``PUT /v1/{resource}/{record["id"]}``; with ``session`` it commits with the caller's transaction.

        ``session`` must write to this outbox's database. The record is stored as the JSON that will be
        sent (datetimes as ISO 8601, numpy values as numbers), so any engine's JSON column can hold it.
        """
        await self._insert(put_row(resource, record, aggregate=aggregate), session)

    async def enqueue_all(self, puts: Iterable[tuple[str, Record]], *, aggregate: str | None = None) -> None:
        """Queue one ``PUT`` per (resource, record), in this order, in one transaction: all of them or none."""
        async with self.engine.begin() as connection:
            for resource, record in puts:
                await connection.execute(insert(outbox_table).values(put_row(resource, record, aggregate=aggregate)))
        self._wake.set()

    async def enqueue_delete(
        self,
        resource: str,
        record_id: str,
        *,
        aggregate: str | None = None,
        session: AsyncSession | AsyncConnection | None = None,
    ) -> None:
        """Queue ``DELETE /v1/{resource}/{record_id}`` (a record already gone counts as delivered)."""
        await self._insert(_pending_row(Operation.DELETE, check_resource(resource), record_id, None, aggregate), session)

    async def _insert(self, row: dict[str, Any], session: AsyncSession | AsyncConnection | None) -> None:
        statement = insert(outbox_table).values(row)
        if session is None:
            async with self.engine.begin() as connection:
                await connection.execute(statement)
            self._wake.set()
            return
        await session.execute(statement)
        # Delivery sees the row once the caller commits; until then the poll interval bounds the delay.
        if isinstance(session, AsyncSession):
            _wake_after_commit(session, self._wake)

    def wake(self) -> None:
        """Deliver at once: the caller committed rows (:func:`put_row`) in a transaction of its own."""
        self._wake.set()

    async def start(self) -> None:
        await self.create_table()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="storage-outbox")

    async def stop(self) -> None:
        """Stop delivering; rows not yet acknowledged stay for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_engine:
            await self.engine.dispose()
        if self._owns_client:
            await self.client.aclose()

    async def pending(self) -> int:
        return await self._count(RowState.PENDING)

    async def dead(self) -> list[dict[str, Any]]:
        """The records storage refused for good, with the reason."""
        columns = (outbox_table.c.seq, outbox_table.c.resource, outbox_table.c.record_id, outbox_table.c.last_error)
        async with self.engine.connect() as connection:
            result = await connection.execute(
                select(*columns).where(outbox_table.c.state == RowState.DEAD.value).order_by(outbox_table.c.seq)
            )
            return [dict(zip(("seq", "resource", "record_id", "last_error"), row, strict=True)) for row in result]

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every pending row was delivered (``TimeoutError`` otherwise); needs ``start``."""
        deadline = time.monotonic() + timeout_s
        while await self.pending():
            if time.monotonic() > deadline:
                raise TimeoutError(f"outbox still holds {await self.pending()} pending records")
            self._wake.set()
            await asyncio.sleep(0.05)

    async def _count(self, state: RowState) -> int:
        async with self.engine.connect() as connection:
            statement = select(func.count()).select_from(outbox_table).where(outbox_table.c.state == state.value)
            return int((await connection.execute(statement)).scalar_one())

    async def _due_heads(self) -> list[Mapping[str, Any]]:
        """The oldest pending row of each aggregate, if its retry time has come and no live claim holds it."""
        inner = outbox_table.alias("earlier")
        first_seq = (
            select(func.min(inner.c.seq))
            .where(inner.c.aggregate == outbox_table.c.aggregate, inner.c.state == RowState.PENDING.value)
            .scalar_subquery()
        )
        statement = (
            select(outbox_table)
            .where(
                outbox_table.c.state == RowState.PENDING.value,
                outbox_table.c.seq == first_seq,
                outbox_table.c.next_attempt_s <= time.time(),
                _unclaimed(time.time()),
            )
            .order_by(outbox_table.c.seq)
            .limit(self.batch_size)
        )
        async with self.engine.connect() as connection:
            return list((await connection.execute(statement)).mappings())

    async def _seconds_until_due(self) -> float:
        async with self.engine.connect() as connection:
            statement = select(func.min(outbox_table.c.next_attempt_s)).where(
                outbox_table.c.state == RowState.PENDING.value
            )
            earliest_s = (await connection.execute(statement)).scalar()
        if earliest_s is None:
            return self.poll_interval_s
        return min(self.poll_interval_s, max(0.0, earliest_s - time.time()))

    async def _claim(self, heads: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The heads this outbox could claim (compare-and-set: a row another replica claimed first is skipped)."""
        claimed = []
        now_s = time.time()
        async with self.engine.begin() as connection:
            for row in heads:
                result = await connection.execute(
                    update(outbox_table)
                    .where(outbox_table.c.seq == row["seq"], outbox_table.c.state == RowState.PENDING.value, _unclaimed(now_s))
                    .values(claimed_by=self.owner, claimed_until_s=now_s + self.lease_s)
                )
                if result.rowcount == 1:
                    claimed.append(row)
        return claimed

    async def deliver_once(self) -> int:
        """One pass over the due heads this outbox could claim; returns how many storage acknowledged."""
        heads = await self._claim(await self._due_heads())
        results = await asyncio.gather(*(self._deliver(row) for row in heads))
        return sum(results)

    async def _send(self, row: Mapping[str, Any]) -> None:
        if row["operation"] == Operation.DELETE:
            try:
                await self.client.delete(row["resource"], row["record_id"])
            except StorageError as exc:
                if exc.storage_status != 404:
                    raise
            return
        await self.client.put(row["resource"], row["payload"])

    async def _deliver(self, row: Mapping[str, Any]) -> bool:
        async with self._in_flight:
            try:
                await self._send(row)
            except (StorageUnavailable, StorageError) as exc:
                await self._failed(row, exc)
                return False
        async with self.engine.begin() as connection:
            await connection.execute(delete(outbox_table).where(outbox_table.c.seq == row["seq"]))
        return True

    async def _failed(self, row: Mapping[str, Any], exc: StorageUnavailable | StorageError) -> None:
        attempts = row["attempts"] + 1
        about = {"resource": row["resource"], "record_id": row["record_id"], "error": exc.message}
        where = outbox_table.c.seq == row["seq"]
        if exc.retryable:
            delay_s = retry_delay_s(attempts, base_s=self.retry_base_s, max_s=self.retry_max_s, jitter=random.random())
            values = {
                "attempts": attempts, "next_attempt_s": time.time() + delay_s, "last_error": exc.message,
                "claimed_by": None, "claimed_until_s": None,
            }
            log = logger.warning if attempts in (1, 10, 100) else logger.debug
            log("storage delivery failed; will retry", extra={**about, "attempts": attempts, "retry_in_s": round(delay_s, 3)})
        else:
            values = {"attempts": attempts, "state": RowState.DEAD.value, "last_error": exc.message}
            logger.error("storage refused a record; kept as dead in the outbox", extra=about)
        async with self.engine.begin() as connection:
            await connection.execute(update(outbox_table).where(where).values(values))

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the pass: an enqueue during the pass wakes the next wait
            try:
                delivered = await self.deliver_once()
            except Exception:  # the writer's own database hiccuped: keep the loop alive, try again
                logger.exception("outbox delivery pass failed")
                delivered = 0
            if delivered:
                continue
            try:
                wait_s = await self._seconds_until_due()
            except Exception:
                logger.exception("outbox could not read its schedule")
                wait_s = self.poll_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)


def _unclaimed(now_s: float):
    """No replica holds a live claim on the row."""
    return or_(outbox_table.c.claimed_until_s.is_(None), outbox_table.c.claimed_until_s < now_s)


def _create_or_add_claim_columns(connection) -> None:
    """``create_all``, and for a table made before the claim columns existed, add them (several replicas
    may start at once: on PostgreSQL ``IF NOT EXISTS``; SQLite has a single writer process)."""
    outbox_metadata.create_all(connection)
    present = {column["name"] for column in inspect(connection).get_columns(outbox_table.name)}
    guard = "IF NOT EXISTS " if connection.dialect.name == "postgresql" else ""
    for name, kind in (("claimed_by", "VARCHAR(64)"), ("claimed_until_s", "FLOAT")):
        if name not in present:
            connection.execute(text(f"ALTER TABLE {outbox_table.name} ADD COLUMN {guard}{name} {kind}"))


def _wake_after_commit(session: AsyncSession, wake: asyncio.Event) -> None:
    event.listen(session.sync_session, "after_commit", lambda _session: wake.set(), once=True)


def writer_outbox(storage_url: str, internal_auth_token: str, database_url: str) -> Outbox | None:
    """The outbox of a writer service (measurement, simulation): its rows in ``database_url``, the service's
    own database (its state and its records commit together); None without ``storage_url`` (nothing is
    sent to storage)."""
    if not storage_url:
        return None
    storage = StorageClient(storage_url, headers=internal_headers(internal_auth_token))
    return Outbox(database_url, storage, owns_client=True)
