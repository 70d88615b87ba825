"""Energy parameters of an impulse response (ISO 3382-1:2009 Annex A.2.4–A.2.6).

All functions take an IR that starts at its onset (t = 0, see `onset.find_onset`). With a
``truncation`` from `decay.lundeby_truncation`, the energy is integrated up to the truncation point and
the exponential tail it removed is added back, so the noise floor does not count as late energy;
without one, the IR is integrated to its end.

* Clarity C_te = 10·lg(∫_0^te p² / ∫_te^∞ p²), te = 50 ms (C50, speech) or 80 ms (C80, music), dB.
* Definition D50 = ∫_0^50ms p² / ∫_0^∞ p² (0…1).
* Centre time Ts = ∫ t·p² / ∫ p², s.
* Direct-to-reverberant ratio (no ISO definition; ISO 3382-1 leaves it open): energy within
  ±`DIRECT_HALF_WINDOW_S` (2.5 ms) of the direct-sound peak over the energy after that window, dB.
"""

from __future__ import annotations

import math

import numpy as np

from sonalyze.acoustics.decay import Truncation
from sonalyze.acoustics.onset import as_signal

DIRECT_HALF_WINDOW_S = 0.0025
#: Decay constant of an exponential energy decay: a = 6·ln(10)/T  (1/s).
_LN10_6 = 6.0 * math.log(10.0)


class _Energy:
    """h² with the Lundeby tail attached: energy after any sample and its first moment."""

    def __init__(self, ir: np.ndarray, fs_hz: float, truncation: Truncation | None):
        self.fs_hz = float(fs_hz)
        energy = as_signal(ir) ** 2
        self.end = energy.size if truncation is None else truncation.index
        self.energy = energy[: self.end]
        self.tail = 0.0 if truncation is None else truncation.tail_energy
        late_rt_s = None if truncation is None else truncation.late_rt_s
        self.tail_rate = _LN10_6 / late_rt_s / self.fs_hz if late_rt_s else math.inf  # 1/sample
        self.total = float(self.energy.sum()) + self.tail
        if self.total <= 0.0:
            raise ValueError("impulse response has no energy after its onset")

    def after(self, n: int) -> float:
        """Energy from sample n on (Σh², unit sample)."""
        if n < self.end:
            return float(self.energy[n:].sum()) + self.tail
        return self.tail * math.exp(-(n - self.end) * self.tail_rate)

    def centre_time_s(self) -> float:
        t_s = np.arange(self.end) / self.fs_hz
        tail_moment = self.tail * (self.end / self.fs_hz + 1.0 / (self.tail_rate * self.fs_hz)) if self.tail else 0.0
        return (float(t_s @ self.energy) + tail_moment) / self.total


def _split(ir, fs_hz, te_ms, truncation) -> tuple[float, float]:
    if te_ms <= 0:
        raise ValueError(f"te_ms must be > 0 ms, got {te_ms}")
    e = _Energy(ir, fs_hz, truncation)
    late = e.after(int(round(te_ms * 1e-3 * fs_hz)))
    return e.total - late, late


def clarity_db(ir: np.ndarray, fs_hz: float, te_ms: float = 80.0, *, truncation: Truncation | None = None) -> float:
    """Clarity C_te in dB (ISO 3382-1 A.2.4): te_ms = 50 → C50, 80 → C80."""
    early, late = _split(ir, fs_hz, te_ms, truncation)
    if late <= 0.0:
        raise ValueError(f"no energy after {te_ms} ms: clarity is infinite")
    if early <= 0.0:
        raise ValueError(f"no energy before {te_ms} ms: clarity is −∞")
    return 10.0 * math.log10(early / late)


def definition(ir: np.ndarray, fs_hz: float, te_ms: float = 50.0, *, truncation: Truncation | None = None) -> float:
    """Definition D50 (0…1) (ISO 3382-1 A.2.5); ``te_ms`` other than 50 gives D_te."""
    early, late = _split(ir, fs_hz, te_ms, truncation)
    return early / (early + late)


def centre_time_s(ir: np.ndarray, fs_hz: float, *, truncation: Truncation | None = None) -> float:
    """Centre time Ts in s (ISO 3382-1 A.2.6)."""
    return _Energy(ir, fs_hz, truncation).centre_time_s()


def direct_to_reverberant_db(
    ir: np.ndarray, fs_hz: float, *, peak_index: int | None = None, truncation: Truncation | None = None
) -> float:
    """Direct-to-reverberant ratio in dB: energy within ±2.5 ms of the direct peak over all energy after.

    ``peak_index`` defaults to argmax |h| (pass the broadband peak when ``ir`` is band-filtered).
    Energy before the window (pre-delay noise) is not counted.
    """
    e = _Energy(ir, fs_hz, truncation)
    peak = int(np.argmax(np.abs(ir))) if peak_index is None else int(peak_index)
    half = int(round(DIRECT_HALF_WINDOW_S * fs_hz))
    after_direct = e.after(peak + half + 1)
    direct = e.after(max(0, peak - half)) - after_direct
    if after_direct <= 0.0 or direct <= 0.0:
        raise ValueError("direct-to-reverberant ratio undefined: no direct or no reverberant energy")
    return 10.0 * math.log10(direct / after_direct)
