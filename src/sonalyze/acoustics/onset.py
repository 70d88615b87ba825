"""Onset of an impulse response (ISO 3382-1:2009 Annex A.2.1) and input checks shared by the package."""

from __future__ import annotations

import numpy as np

#: ISO 3382-1 A.2.1: the IR starts where h² first comes within 20 dB of its maximum.
ONSET_THRESHOLD_DB = -20.0


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
    return int(np.argmax(energy >= energy.max() * 10.0 ** (threshold_db / 10.0)))
