"""Who is connected where, in Redis, so any gateway instance (or a backend) can look it up (seed 001).

Keys (``{prefix}`` is ``GATEWAY_BROKER_PREFIX``, ``gateway:`` by default), one hash field per gateway
instance so instances never overwrite each other:

- ``{prefix}conn:{tenant or -}:{device_id}`` → field ``{gateway_id}``: JSON ``{"device_id", "tenant_id",
  "gateway_id", "connections", "channels", "last_heartbeat"}``;
- ``{prefix}room:{channel}`` → field ``{gateway_id}``: JSON ``{"members": ["tenant:device", ...],
  "last_heartbeat"}``.

Every key expires after twice ``CONNECTION_TIMEOUT_SEC``. The heartbeat timer refreshes them in one
pipeline per tick (never a Redis call per message) and deletes this instance's fields of devices and
channels gone since the last tick. A field whose ``last_heartbeat`` is older than the TTL belongs to an
instance that died while others kept the key alive: readers ignore it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

logger = logging.getLogger("sonalyze.gateway.registry")

NO_TENANT = "-"


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    tenant_id: str | None
    connections: int
    channels: tuple[str, ...]


Snapshot = tuple[Mapping[str, DeviceEntry], Mapping[str, tuple[str, ...]]]
"""(device id → its entry, channel → its members as ``tenant:device``): what this instance holds now."""


def conn_key(prefix: str, tenant_id: str | None, device_id: str) -> str:
    return f"{prefix}conn:{tenant_id or NO_TENANT}:{device_id}"


def room_key(prefix: str, channel: str) -> str:
    return f"{prefix}room:{channel}"


class ConnectionRegistry:
    def __init__(self, url: str, prefix: str, gateway_id: str, ttl_s: float, snapshot: Callable[[], Snapshot]) -> None:
        import redis.asyncio as redis  # only a gateway with a registry needs it

        self._client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)
        self._prefix = prefix
        self._gateway_id = gateway_id
        self._ttl_ms = int(ttl_s * 1000)
        self._snapshot = snapshot
        self._written: set[str] = set()
        """Keys this instance wrote a field into at the last refresh (to delete the field when gone)."""
        self._refreshing: asyncio.Task[None] | None = None
        self.connected = True

    def tick(self) -> None:
        """Called by the heartbeat timer: start a refresh unless the previous one still runs."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    async def refresh(self) -> None:
        devices, rooms = self._snapshot()
        now_s = time.time()
        pipe = self._client.pipeline(transaction=False)
        keys: set[str] = set()
        for device_id, entry in devices.items():
            key = conn_key(self._prefix, entry.tenant_id, device_id)
            value = {
                "device_id": device_id, "tenant_id": entry.tenant_id, "gateway_id": self._gateway_id,
                "connections": entry.connections, "channels": list(entry.channels), "last_heartbeat": now_s,
            }
            pipe.hset(key, self._gateway_id, orjson.dumps(value))
            pipe.pexpire(key, self._ttl_ms)
            keys.add(key)
        for channel, members in rooms.items():
            key = room_key(self._prefix, channel)
            pipe.hset(key, self._gateway_id, orjson.dumps({"members": list(members), "last_heartbeat": now_s}))
            pipe.pexpire(key, self._ttl_ms)
            keys.add(key)
        for gone in self._written - keys:
            pipe.hdel(gone, self._gateway_id)
        try:
            await pipe.execute()
        except (_redis_error(), OSError) as exc:
            if self.connected:
                logger.warning("connection registry not updated (redis): %s; retrying every heartbeat", exc)
            self.connected = False
            return
        self.connected = True
        self._written = keys

    async def close(self) -> None:
        """Take this instance's fields out (a clean shutdown) and close the client."""
        if self._refreshing is not None:
            await asyncio.gather(self._refreshing, return_exceptions=True)
        if self._written:
            pipe = self._client.pipeline(transaction=False)
            for key in self._written:
                pipe.hdel(key, self._gateway_id)
            try:
                await pipe.execute()
            except (_redis_error(), OSError) as exc:
                logger.warning("connection registry not cleared (redis): %s; its keys expire by themselves", exc)
        await self._client.aclose()


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError
