"""Onset of an impulse response (ISO 3382-1:2009 Annex A.2.1) and input checks shared by the package."""

from __future__ import annotations

import numpy as np

#: ISO 3382-1 A.2.1: the IR starts where h² first comes within 20 dB of its maximum.
ONSET_THRESHOLD_DB = -20.0
#: ISO 3382-1 A.2.1 asks for the onset where the signal "rises significantly above the background noise":
#: a sample counts only this far above the mean noise power before the peak, dB (a Gaussian noise sample
#: exceeds its mean power by 15 dB with probability 2·10⁻⁸), so a peak less than 20 dB above the noise
#: (a broadband response at 20 dB SNR) does not start in the noise before the direct sound.
ONSET_ABOVE_NOISE_DB = 15.0
#: Fewest samples in the first half of the stretch before the peak for a noise estimate.
MIN_NOISE_SAMPLES = 32
#: Median of a χ²₁ variable over its mean: h²'s median over the noise power.
_CHI2_1_MEDIAN = 0.4549


def as_signal(x: np.ndarray, name: str = "impulse response", *, min_samples: int = 2) -> np.ndarray:
    """Validate a 1-D finite, non-silent float signal; raise ValueError with a clear message otherwise."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_samples:
        raise ValueError(f"{name} too short: {arr.size} samples, need at least {min_samples}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real-valued numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite samples")
    if not np.any(arr):
        raise ValueError(f"{name} is all zeros")
    return arr


def find_onset(ir: np.ndarray, threshold_db: float = ONSET_THRESHOLD_DB) -> int:
    """Index of the first sample whose energy h² is within ``|threshold_db|`` dB of the maximum.

    ISO 3382-1:2009 Annex A.2.1 (−20 dB). Raises ValueError for an empty, non-finite or all-zero IR.
    """
    energy = as_signal(ir, min_samples=1) ** 2
    return int(np.argmax(energy >= onset_level(energy, int(np.argmax(energy)), threshold_db)))


def onset_level(energy: np.ndarray, peak: int, threshold_db: float = ONSET_THRESHOLD_DB) -> float:
    """The h² an onset sample must reach: ``threshold_db`` re ``energy[peak]`` (ISO 3382-1 A.2.1), raised to
    `ONSET_ABOVE_NOISE_DB` over the noise power before the direct sound — the median of the first half of
    ``energy[:peak]``, when it holds `MIN_NOISE_SAMPLES` and lies below that threshold (else the stretch
    before the peak is the response itself, e.g. a decay that starts at sample 0, not noise)."""
    level = energy[peak] * 10.0 ** (threshold_db / 10.0)
    before = energy[: peak // 2]
    if before.size >= MIN_NOISE_SAMPLES:
        noise = float(np.median(before)) / _CHI2_1_MEDIAN
        if noise < level:
            level = max(level, noise * 10.0 ** (ONSET_ABOVE_NOISE_DB / 10.0))
    return level
