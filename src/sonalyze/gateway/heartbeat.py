"""One timer for every connection: ping the silent ones, close those silent past the timeout.

Every ``HEARTBEAT_INTERVAL_SEC`` the timer looks at each open connection once: silent for at least the
interval → a WebSocket ping (the client's pong is activity); silent for ``CONNECTION_TIMEOUT_SEC`` →
closed with 4408. No task or timer per connection. Other periodic work (the connection registry's
refresh) rides on the same tick.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

logger = logging.getLogger("sonalyze.gateway.heartbeat")


class HeartbeatAction(enum.Enum):
    NONE = "none"
    PING = "ping"
    CLOSE = "close"


def heartbeat_action(idle_s: float, interval_s: float, timeout_s: float) -> HeartbeatAction:
    """What one tick does to a connection silent for ``idle_s``."""
    if idle_s >= timeout_s:
        return HeartbeatAction.CLOSE
    if idle_s >= interval_s:
        return HeartbeatAction.PING
    return HeartbeatAction.NONE


class Beating(Protocol):
    last_seen_s: float
    """``time.monotonic()`` of the last data received from the client."""

    def ping(self) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Heartbeat:
    def __init__(
        self,
        connections: Callable[[], Iterable[Beating]],
        interval_s: float,
        timeout_s: float,
        close_code: int,
        also: Callable[[], None] | None = None,
    ) -> None:
        self._connections = connections
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._close_code = close_code
        self._also = also
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now_s = time.monotonic()
        reason = f"connection timeout: nothing received for {self._timeout_s:g} s"
        for connection in tuple(self._connections()):
            action = heartbeat_action(now_s - connection.last_seen_s, self._interval_s, self._timeout_s)
            if action is HeartbeatAction.PING:
                connection.ping()
            elif action is HeartbeatAction.CLOSE:
                connection.close(self._close_code, reason)
        if self._also is not None:
            try:
                self._also()
            except Exception:  # a failing side job must not stop the heartbeat
                logger.exception("heartbeat side job failed")
        self.start()
