"""Garbage-collector settings for a process that holds thousands of long-lived connections.

CPython's full (generation 2) collection walks every object the collector tracks: with 5,000 WebSockets
open it paused the gateway for 60–180 ms, the whole tail of the lobby benchmark's p99 (bench/lobby.md).
CPython runs a full collection only once the objects promoted since the last one exceed 25 % of the
long-lived ones (Modules/gcmodule.c, ``long_lived_pending``), so the remedy is to promote less:

- a larger generation-0 threshold: a young collection runs every `GEN0_THRESHOLD` allocations instead
  of 700, so an event's short-lived objects (its request, its upstream call, its push) have mostly died by
  reference count before one runs and promotes them;
- `gc.freeze` once after start-up (the Python docs' recommendation, as Instagram uses it): the modules,
  routes and settings are never walked again.

Objects are still freed by reference count at once; only reference cycles wait longer."""

from __future__ import annotations

import gc

#: Allocations between young collections (CPython's default: 700).
GEN0_THRESHOLD = 50_000

_frozen = False


def tune_for_long_lived_connections() -> None:
    """Raise the young-generation threshold and freeze what start-up created (the freeze once per process)."""
    global _frozen
    _, gen1_threshold, gen2_threshold = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1_threshold, gen2_threshold)
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
