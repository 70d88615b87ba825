"""The worker side of the task queue (sonalyze.common.tasks.redis_broker), on the real Redis: a consumer
whose process holds all the messages it may take sleeps until one is acknowledged, then fetches at once
(it polled every 5 ms before: 4-10 ms of CPU per analysis, bench/task_queue.md)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from sonalyze.common.tasks import redis_broker
from tests.support.cluster import redis_database

pytestmark = [pytest.mark.redis]

REDIS_DB = 7


def test_a_busy_consumer_sleeps_until_its_message_is_acknowledged_then_fetches_the_next():
    broker = redis_broker(redis_database(REDIS_DB), heartbeat_timeout_s=15.0)
    try:
        actor = broker.get_actor("sonalyze_analysis")
        for task_id in ("first", "second"):
            actor.send(task_id, "")  # never run: the test is the consumer
        consumer = broker.consume("analysis", prefetch=1, timeout=2000)
        first = next(consumer)
        assert first is not None and first.args[0] == "first"

        woke: dict[str, Any] = {}

        def wait_for_room() -> None:
            woke["message"] = next(consumer)
            woke["at_s"] = time.monotonic()

        waiting = threading.Thread(target=wait_for_room)
        waiting.start()
        time.sleep(0.3)
        assert waiting.is_alive()  # no room (prefetch 1): it sleeps, it does not poll
        acked_s = time.monotonic()
        consumer.ack(first)
        waiting.join(2.0)
        assert not waiting.is_alive() and woke["message"] is None and woke["at_s"] - acked_s < 0.1
        second = next(consumer)  # room again: fetched at once
        assert second is not None and second.args[0] == "second"
        consumer.ack(second)
        consumer.close()
    finally:
        broker.close()
