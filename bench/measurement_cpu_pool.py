"""What the process pool costs: a no-op task's round trip, and one sweep analysis in-process vs in the pool.

The pool's workers are started by ``warm_up`` (with the fork server the first time) and reused by every task.

    .venv/bin/python bench/measurement_cpu_pool.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import fftconvolve

from sonalyze.acoustics.sweep import SweepParams, exponential_sweep
from sonalyze.common.blobs import BlobAddress
from sonalyze.common.cpu_pool import DEFAULT_PRELOAD, CpuPool
from sonalyze.measurement.analysis import AnalysisTask, analyze_uploads
from sonalyze.measurement.jobs import AnalysisSource


def _ignore(_fraction: float, _message: str) -> None:
    pass


def _recording(params: SweepParams, path: Path) -> None:
    rng = np.random.default_rng(1)
    t_s = np.arange(int(1.5 * params.fs_hz)) / params.fs_hz
    ir = rng.standard_normal(t_s.size) * 10.0 ** (-3.0 * t_s / 0.6) * 0.3
    wet = fftconvolve(exponential_sweep(params), ir)
    soundfile.write(path, 0.5 * wet / np.max(np.abs(wet)), params.fs_hz, subtype="PCM_24")


def _ms(values_s: list[float]) -> str:
    return f"median {1000 * statistics.median(values_s):7.1f} ms  max {1000 * max(values_s):7.1f} ms  (n={len(values_s)})"


async def main(rounds: int) -> None:
    params = SweepParams()
    path = Path(tempfile.mkdtemp()) / "mic.wav"
    _recording(params, path)
    task = AnalysisTask(AnalysisSource.SWEEP_DECONVOLUTION, params, (("mic", path.name),), BlobAddress("", path.parent))
    pool = CpuPool(1, 0, preload=(*DEFAULT_PRELOAD, "sonalyze.measurement.analysis"))
    start = time.perf_counter()
    await pool.warm_up()
    print(f"warm-up (fork server, worker)  {1000 * (time.perf_counter() - start):7.1f} ms")
    noop, inline, pooled = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        await pool.run(sum, [1, 2, 3])
        noop.append(time.perf_counter() - start)
        start = time.perf_counter()
        analyze_uploads(task, progress=_ignore)
        inline.append(time.perf_counter() - start)
        start = time.perf_counter()
        await pool.run(analyze_uploads, task, on_progress=_ignore)
        pooled.append(time.perf_counter() - start)
    await pool.close()
    print(f"no-op task round trip          {_ms(noop)}")
    print(f"5 s sweep analysis, in-process {_ms(inline)}")
    print(f"5 s sweep analysis, in pool    {_ms(pooled)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
