"""An asyncio client for the gateway: requests correlated by ``request_id``, pushed events, reconnects.

Wire protocol (gateway seed): the client sends ``{"event", "request_id", "data"}``; the gateway answers
``{"type": "response", "event", "request_id", "data"}`` or ``{"type": "error", "event", "request_id",
"error": {"code", "message", "details"?}}`` and pushes ``{"type": "event", "event", "data"}``.

Several gateways (``SonalyzeClient("http://a:8000,http://b:8000")``, the replicas of one cluster on one
Redis or NATS broker) stand in for a load balancer: the client connects to them in turn and, when one
refuses the connection (it died), to the next (:mod:`sonalyze.common.replicas`); its HTTP calls do the
same. A reconnect after a drop resumes on whichever gateway answers: the cluster shares the push history.

Identity (contract C1): a new client connects to ``/ws``, sends ``identify {}`` and keeps the device token
the gateway issues (optionally in ``credentials_path``, mode 0600); later connections and reconnects present
it as ``?device_token=``, HTTP calls as ``X-Device-Token``. A bare ``device_id`` without a token only works
against a gateway in development mode (``ALLOW_INSECURE_DEVICE_IDS``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sonalyze.common.replicas import Replicas, request_any

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """An ``error`` envelope (or an HTTP error from the proxy), with its stable code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, event: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.event = event


class ConnectionLost(GatewayError):
    """The WebSocket dropped while a request was waiting for its answer."""

    def __init__(self, event: str | None = None) -> None:
        super().__init__("connection_lost", "the connection to the gateway was lost before the answer came", event=event)


@dataclass(frozen=True, slots=True)
class PushedEvent:
    event: str
    data: dict[str, Any]


def _ws_url(gateway_url: str, device_id: str | None, device_token: str | None, position: dict[str, Any] | None = None) -> str:
    parts = urlsplit(gateway_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = [f"device_id={quote(device_id, safe='')}"] if device_id is not None else []
    if device_token is not None:
        query.append(f"device_token={quote(device_token, safe='')}")
    if position is not None and query:  # resuming needs the device named on connect
        query.append(f"resume={quote(position['epoch'], safe='')}:{position['offset']}")
    return urlunsplit((scheme, parts.netloc, "/ws", "&".join(query), ""))


def _http_url(gateway_url: str) -> str:
    parts = urlsplit(gateway_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class SonalyzeClient:
    """One device's connection to the gateway.

    ``request()`` sends an event and waits for its ``response`` (raising :class:`GatewayError` on an
    ``error`` envelope); requests may run concurrently. Pushed events are kept in arrival order and read
    with ``next_event()`` (the first matching one) or ``async for event in client.events()``. When the
    connection drops, waiting requests fail with :class:`ConnectionLost` and the client reconnects with
    exponential back-off (with jitter) until ``close()``; pushed events keep flowing after a reconnect.

    Resuming (gateway issue 18): the client keeps the position (``pos``) of the last push it saw and
    reconnects with ``?resume=``, so the gateway first replays every push it missed, in order and once
    (a push at or below the kept position is dropped, should one come twice). When the gateway's history
    no longer reaches back that far it sends ``resync_required``: the client then calls ``on_resync``
    (reload the state: ``lobby.get``, ``measurement.session_status``); the event is also queued.
    ``on_reconnect`` runs after every reconnect (after the replay): pushes a backend could not deliver
    while the device was away (the gateway restarting) are in no history, so a client that must not miss
    an instruction reads the state there too.
    """

    def __init__(
        self,
        gateway_url: str,
        device_id: str | None = None,
        *,
        device_token: str | None = None,
        credentials_path: Path | None = None,
        reconnect: bool = True,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        request_timeout_s: float = 30.0,
        http_timeout_s: float = 60.0,
        on_resync: Callable[[], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.credentials_path = credentials_path
        if device_token is None and credentials_path is not None and credentials_path.exists():
            saved = orjson.loads(credentials_path.read_bytes())
            device_id, device_token = saved["device_id"], saved["device_token"]
        self.device_id = device_id
        """None until the gateway issued a device (first ``connect()`` without credentials)."""
        self.device_token = device_token
        self.gateways = Replicas(",".join(_http_url(url.strip()) for url in gateway_url.split(",")))
        """The gateway URLs (several: one cluster's replicas), tried in turn; one refusing connections is passed over."""
        self._reconnect = reconnect
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._request_timeout_s = request_timeout_s
        self._http = httpx.AsyncClient(timeout=http_timeout_s)
        if device_token is not None:
            self._http.headers["X-Device-Token"] = device_token
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, tuple[str, asyncio.Future]] = {}
        self._events: list[PushedEvent] = []
        self._events_changed = asyncio.Condition()
        self._request_ids = itertools.count(1)
        self._gateway_url: str | None = None
        self.reconnects = 0
        self.position: dict[str, Any] | None = None
        """``{"epoch", "offset"}`` of the last push seen: where a reconnect resumes."""
        self.on_resync = on_resync
        self.on_reconnect = on_reconnect
        self.resyncs = 0
        self._callback_tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "SonalyzeClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def gateway_url(self) -> str:
        """The gateway used last (the first one before any call)."""
        return self._gateway_url or self.gateways.urls[0]

    async def _open(self) -> ClientConnection:
        """A WebSocket to the next gateway that accepts one (each refusing gateway is passed over)."""
        refused: Exception | None = None
        for url in self.gateways.order():
            try:
                connection = await connect(_ws_url(url, self.device_id, self.device_token, self.position), max_size=None, open_timeout=10)
            except OSError as exc:  # refused: the gateway is down; the next one may take the device
                self.gateways.failed(url)
                refused = exc
                continue
            self.gateways.answered(url)
            self._gateway_url = url
            return connection
        assert refused is not None
        raise refused

    async def connect(self) -> None:
        """Open the WebSocket and start reading; without credentials, get a new device first (``identify {}``)."""
        self._ws = await self._open()
        self._connected.set()
        self._reader = asyncio.create_task(self._read_forever(), name=f"sonalyze-client-{self.device_id or 'new'}")
        if self.device_id is None:  # a new device, or a token whose device we have yet to learn
            answer = await self.request("identify", {})
            if answer.get("issued"):
                self._keep_credentials(answer["device_id"], answer["device_token"])
            else:
                self.device_id = answer["device_id"]

    def _keep_credentials(self, device_id: str, device_token: str) -> None:
        self.device_id, self.device_token = device_id, device_token
        self._http.headers["X-Device-Token"] = device_token
        if self.credentials_path is not None:
            self.credentials_path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(orjson.dumps({"device_id": device_id, "device_token": device_token}))

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._fail_pending()
        await self._http.aclose()

    async def wait_connected(self, timeout_s: float = 30.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def request(self, event: str, data: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Send ``event`` with ``data`` and return the ``data`` of its response."""
        await self.wait_connected(timeout_s or self._request_timeout_s)
        request_id = f"{self.device_id or 'new'}-{next(self._request_ids)}"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (event, future)
        try:
            assert self._ws is not None
            await self._ws.send(orjson.dumps({"event": event, "request_id": request_id, "data": data or {}}).decode())
            return await asyncio.wait_for(future, timeout_s or self._request_timeout_s)
        except ConnectionClosed as exc:
            raise ConnectionLost(event) from exc
        finally:
            self._pending.pop(request_id, None)

    async def next_event(
        self,
        event: str | None = None,
        *,
        where: Callable[[PushedEvent], bool] | None = None,
        timeout_s: float = 30.0,
    ) -> PushedEvent:
        """Take the first pushed event (named ``event`` and matching ``where``) received so far or next."""

        def match() -> PushedEvent | None:
            for index, pushed in enumerate(self._events):
                if (event is None or pushed.event == event) and (where is None or where(pushed)):
                    return self._events.pop(index)
            return None

        async def wait() -> PushedEvent:
            async with self._events_changed:
                while (found := match()) is None:
                    await self._events_changed.wait()
                return found

        return await asyncio.wait_for(wait(), timeout_s)

    async def events(self) -> AsyncIterator[PushedEvent]:
        """Every pushed event, in arrival order, until the client is closed."""
        while not self._closing:
            yield await self.next_event(timeout_s=float("inf"))

    def pending_events(self) -> list[PushedEvent]:
        """Pushed events received and not yet taken (a copy)."""
        return list(self._events)

    async def upload(self, job_id: str, name: str, audio: bytes | Path, content_type: str = "audio/wav") -> dict[str, Any]:
        """Upload a recording through the gateway's ``/v1/jobs/{job_id}/uploads/{name}`` proxy (streamed from a file)."""
        path = f"/v1/jobs/{quote(job_id)}/uploads/{quote(name)}"
        if isinstance(audio, Path):
            with audio.open("rb") as body:
                response = await self.http("POST", path, content=_file_chunks(body), headers={"content-type": content_type})
        else:
            response = await self.http("POST", path, content=audio, headers={"content-type": content_type})
        return _json_or_raise(response)

    async def http(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any HTTP call through the gateway (``/v1/jobs/...``, ``/v1/measurement/...``, ``/v1/simulation/...``);
        with several gateways, the next one when a gateway refuses the connection."""
        return await request_any(self._http, self.gateways, method, path, **kwargs)

    async def get_json(self, path: str) -> dict[str, Any]:
        return _json_or_raise(await self.http("GET", path))

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json_or_raise(await self.http("POST", path, json=body))

    def backoff_delays_s(self) -> Iterator[float]:
        """The waits between reconnect attempts: exponential back-off from ``backoff_initial_s``, doubling up
        to ``backoff_max_s``, each a random half to all of its step (jitter: phones dropped together do not
        come back together). Endless; callers retrying something else take as many as they allow."""
        step_s = self._backoff_initial_s
        while True:
            yield step_s * (0.5 + random.random() / 2)
            step_s = min(step_s * 2, self._backoff_max_s)

    async def _read_forever(self) -> None:
        delays_s = self.backoff_delays_s()
        while not self._closing:
            received = False
            try:
                assert self._ws is not None
                async for message in self._ws:
                    received = True
                    await self._dispatch(orjson.loads(message))
            except ConnectionClosed:
                pass
            if received:  # the back-off starts again after a connection that carried messages
                delays_s = self.backoff_delays_s()
            self._connected.clear()
            self._fail_pending()
            if self._closing or not self._reconnect:
                return
            while not self._closing:
                await asyncio.sleep(next(delays_s))
                try:
                    self._ws = await self._open()
                except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:  # a gateway starting may drop or refuse the upgrade
                    log.info("reconnect of %s failed: %s", self.device_id, exc)
                    continue
                self.reconnects += 1
                self._connected.set()
                if self.on_reconnect is not None:
                    self._start_callback(self.on_reconnect, "reconnect")
                break

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "event":
            if not self._advance(message):
                return  # seen already
            async with self._events_changed:
                self._events.append(PushedEvent(message.get("event", ""), message.get("data") or {}))
                self._events_changed.notify_all()
            return
        pending = self._pending.get(message.get("request_id") or "")
        if pending is None or pending[1].done():
            return
        event, future = pending
        if kind == "response":
            future.set_result(message.get("data") or {})
        else:
            error = message.get("error") or {}
            future.set_exception(
                GatewayError(error.get("code", "unknown"), error.get("message", ""), error.get("details"), event)
            )

    def _advance(self, message: dict[str, Any]) -> bool:
        """Keep a push's position (False when it is at or below the kept one: a duplicate); on
        ``resync_required``, take the gateway's position and start ``on_resync``."""
        position = message.get("pos")
        if message.get("event") == "resync_required":
            position = (message.get("data") or {}).get("pos")
            self.position = position if isinstance(position, dict) else None
            self.resyncs += 1
            if self.on_resync is not None:
                self._start_callback(self.on_resync, "resync")
            return True
        if not isinstance(position, dict):
            return True
        kept = self.position
        if kept is not None and kept.get("epoch") == position.get("epoch") and position.get("offset", 0) <= kept.get("offset", 0):
            return False
        self.position = position
        return True

    def _start_callback(self, callback: Callable[[], Awaitable[None]], kind: str) -> None:
        """Run ``on_resync``/``on_reconnect`` beside the reader (it may send requests whose answers the reader reads)."""
        task = asyncio.ensure_future(callback())
        task.set_name(f"sonalyze-client-{kind}-{self.device_id}")
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    def _fail_pending(self) -> None:
        for event, future in list(self._pending.values()):
            if not future.done():
                future.set_exception(ConnectionLost(event))


async def _file_chunks(body, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
    while chunk := body.read(chunk_bytes):
        yield chunk


def _json_or_raise(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        raise GatewayError(error.get("code", f"http_{response.status_code}"), error.get("message", ""), error.get("details"))
    raise GatewayError(f"http_{response.status_code}", response.text[:200])
