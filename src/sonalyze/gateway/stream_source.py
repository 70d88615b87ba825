"""A NATS JetStream durable consumer feeding a channel (seed 003's market relay).

Each message's data (already JSON) is relayed byte for byte (``STREAM_FORMAT=raw``, seed 003's "pure
relay") or wrapped into the event envelope by concatenation (``envelope``); either way it is serialized
once, by its producer, and published through the broker like any broadcast: every gateway
instance delivers it to its ``/ws/stream`` clients. Several instances share the durable consumer
(``STREAM_DURABLE``): each message is fetched by one of them and still reaches every client once.
A message that is not JSON is acknowledged and dropped (logged): redelivering it would not fix it.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from sonalyze.gateway.broker import Broker
from sonalyze.gateway.publication import Targets

logger = logging.getLogger("sonalyze.gateway.stream")

FETCH_BATCH = 256
FETCH_WAIT_S = 1.0
RETRY_S = 0.5


def stream_envelope(event: str, data: bytes) -> bytes:
    """``{"type": "event", "event", "data"}`` around JSON ``data`` as it is (validated, not re-encoded)."""
    orjson.loads(data)  # raises orjson.JSONDecodeError for anything but one JSON value
    return b'{"type":"event","event":' + orjson.dumps(event) + b',"data":' + data.strip() + b"}"


def stream_payload(event: str, data: bytes, raw: bool) -> bytes:
    """What stream clients get for one message: ``data`` itself (checked to be JSON) or its envelope."""
    if raw:
        orjson.loads(data)  # raises orjson.JSONDecodeError for anything but one JSON value
        return data
    return stream_envelope(event, data)


class JetStreamSource:
    def __init__(self, url: str, subject: str, durable: str, event: str, channel: str, broker: Broker, raw: bool = False) -> None:
        self._url = url
        self._raw = raw
        self._subject = subject
        self._durable = durable
        self._event = event
        self._targets = Targets(channels=[channel])
        self._broker = broker
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-jetstream-source")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        import nats
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout

        while True:
            client = None
            try:
                client = await nats.connect(self._url, connect_timeout=1, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
                subscription = await client.jetstream().pull_subscribe(self._subject, durable=self._durable)
                self.connected = True
                logger.info("stream source: durable %s on %s", self._durable, self._subject)
                while True:
                    try:
                        messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
                    except (NatsTimeout, asyncio.TimeoutError):
                        continue
                    for message in messages:
                        await self._relay(message.data)
                        await message.ack()
            except asyncio.CancelledError:
                raise
            except (NatsError, OSError, asyncio.TimeoutError) as exc:
                self.connected = False
                logger.warning("stream source (nats %s): %s; retrying", self._url, exc)
                await asyncio.sleep(RETRY_S)
            finally:
                self.connected = False
                if client is not None and not client.is_closed:
                    await client.close()

    async def _relay(self, data: bytes) -> None:
        try:
            payload = stream_payload(self._event, data, self._raw)
        except orjson.JSONDecodeError:
            logger.warning("stream source: dropped a message on %s that is not JSON (%d bytes)", self._subject, len(data))
            return
        await self._broker.publish(self._targets, payload, positioned=False)  # a relay: byte for byte, never resumed
