"""Tasks for the CpuPool tests, in a module that imports next to nothing (task processes import it)."""

from __future__ import annotations

import os
import time


def sum_of_squares(n: int, *, offset: int = 0) -> int:
    return sum(i * i for i in range(n)) + offset


def raise_value_error(text: str) -> None:
    raise ValueError(text)


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def report_steps(steps: int, *, progress) -> str:
    for step in range(steps):
        progress((step + 1) / steps, f"step {step + 1}")
    return "finished"


def wait_for_file(path: str, *, progress=None) -> int:
    """Block (in the task process) until ``path`` exists; tell the parent our pid first."""
    if progress is not None:
        progress(0.0, str(os.getpid()))
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def exit_abruptly() -> None:
    os._exit(3)


def exit_by_system_exit() -> None:
    raise SystemExit(4)


def own_pid() -> int:
    return os.getpid()


def blas_thread_counts() -> list[int]:
    import numpy  # noqa: F401  (loads the BLAS library that threadpoolctl reports)
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def record_run_and_wait(runs_dir: str, release: str, *, progress) -> str:
    """Leave one file per run in ``runs_dir`` (named by pid), say the pid, then wait for ``release``."""
    with open(os.path.join(runs_dir, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    progress(0.0, str(os.getpid()))
    while not os.path.exists(release):
        time.sleep(0.01)
    return "done"
