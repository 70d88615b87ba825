"""Energy parameters of an impulse response (ISO 3382-1:2009 Annex A.2.4–A.2.6).

All functions take an IR that starts at its onset (t = 0, see `onset.find_onset`). With a
``truncation`` from `decay.lundeby_truncation`, the noise power is subtracted (Chu 1978), the energy
is integrated up to the truncation point and the exponential tail it removed is added back
(Lundeby 1995; the combination of Guski & Vorländer 2014), so the noise floor does not count as late
energy; without one, the IR is integrated to its end.

`refusals` says which parameters the observed decay cannot support: the energy not measured above the
noise — the tail added back (an extrapolation below the noise floor) plus the noise power subtracted
(an estimate) — may only weigh so much that an error of 100 % in it moves the value by less than one
just-noticeable difference (ISO 3382-1 Table A.1: C 1 dB, D 0.05, Ts 10 ms; DRR, without an ISO JND,
as C).

* Clarity C_te = 10·lg(∫_0^te p² / ∫_te^∞ p²), te = 50 ms (C50, speech) or 80 ms (C80, music), dB.
* Definition D50 = ∫_0^50ms p² / ∫_0^∞ p² (0…1).
* Centre time Ts = ∫ t·p² / ∫ p², s.
* Direct-to-reverberant ratio (no ISO definition; ISO 3382-1 leaves it open): energy within
  ±`DIRECT_HALF_WINDOW_S` (2.5 ms) of the direct-sound peak over the energy after that window, dB.
"""

from __future__ import annotations

import math

import numpy as np

from sonalyze.acoustics.decay import BandEnergy, Truncation, block_sums
from sonalyze.acoustics.onset import as_signal

DIRECT_HALF_WINDOW_S = 0.0025
#: Largest share of the late energy (after te, or after the direct window for DRR) that may be the
#: extrapolated tail: without it (or doubled) C moves by < 1 dB: 1 − 10^(−1/10).
MAX_TAIL_SHARE_CLARITY = 1.0 - 10.0 ** -0.1
#: Largest share of the total energy that may be tail for D50 (|ΔD| ≤ share ≤ JND 0.05).
MAX_TAIL_SHARE_DEFINITION = 0.05
#: Largest change of Ts the tail may make, s (JND 10 ms).
MAX_TAIL_EFFECT_TS_S = 0.010
#: Decay constant of an exponential energy decay: a = 6·ln(10)/T  (1/s).
_LN10_6 = 6.0 * math.log(10.0)


class EnergyDecay:
    """h² (noise subtracted) with the Lundeby tail attached: energy after any sample and its first
    moment. Build one per band IR and ask it for every parameter (the module functions do just that).

    From a `decay.BandEnergy` (`of_band`) the sums run over its blocks of M samples, and a boundary inside a
    block adds that block's full-rate h² up to it: every sum is the full-rate one (no rectangle-rule edge)."""

    def __init__(self, ir: np.ndarray, fs_hz: float, truncation: Truncation | None):
        self._set(BandEnergy.of_ir(as_signal(ir)), fs_hz, truncation)

    @classmethod
    def of_band(cls, band: BandEnergy, fs_hz: float, truncation: Truncation | None) -> EnergyDecay:
        """The same from a band's h² and block sums (``truncation`` in full-rate units, `decay.truncation_of_band`),
        which the analysis has already."""
        self = cls.__new__(cls)
        self._set(band, fs_hz, truncation)
        return self

    def _set(self, band: BandEnergy, fs_hz: float, truncation: Truncation | None) -> None:
        self.fs_hz = float(fs_hz)
        self._after: dict[int, float] = {}
        self._centre_time_s: float | None = None
        if truncation is not None and not truncation.decay_found:
            raise ValueError("no decay above the noise floor")
        self.band = band
        self.factor = band.factor
        self.end = band.blocks.size * band.factor if truncation is None else truncation.index
        self.noise = 0.0 if truncation is None else truncation.noise_power
        self.blocks = band.blocks[: self.end // self.factor] - self.noise * self.factor  # noise-subtracted block energies
        self.tail = 0.0 if truncation is None else truncation.tail_energy
        late_rt_s = None if truncation is None else truncation.late_rt_s
        self.tail_rate = _LN10_6 / late_rt_s / self.fs_hz if late_rt_s else math.inf  # 1/sample
        self.total = float(self.blocks.sum()) + self.tail
        if self.total <= 0.0:
            raise ValueError("impulse response has no energy after its onset")

    def after(self, n: int) -> float:
        """Energy from sample n on (Σh², unit sample); each n summed once (the values and their gates ask
        for the same few boundaries)."""
        if n not in self._after:
            if n < self.end:
                block = -(-n // self.factor)  # the first whole block from n; the samples before it from h²
                edge = float(self.band.energy[n : block * self.factor].sum()) - self.noise * (block * self.factor - n)
                self._after[n] = float(self.blocks[block:].sum()) + edge + self.tail
            else:
                self._after[n] = self.tail * math.exp(-(n - self.end) * self.tail_rate)
        return self._after[n]

    def binned(self, length: int) -> np.ndarray:
        """The noise-subtracted energy summed over consecutive bins of ``length`` samples (a multiple of the
        block factor) from the onset to the truncation (the last bin partial)."""
        return block_sums(self.blocks, length // self.factor, pad=True)

    def tail_after(self, n: int) -> float:
        """Part of `after` (n) that is the extrapolated tail."""
        return self.tail * math.exp(-max(0, n - self.end) * self.tail_rate) if self.tail else 0.0

    def tail_moment_s(self) -> float:
        """∫ t·(tail) in s·energy: the tail starts at the truncation and decays with the late T."""
        return self.tail * (self.end / self.fs_hz + 1.0 / (self.tail_rate * self.fs_hz)) if self.tail else 0.0

    def uncertain_after(self, n: int) -> float:
        """Energy after sample n not measured above the noise: the tail plus the noise power subtracted."""
        return self.tail_after(n) + self.noise * max(0, self.end - n)

    def uncertain_moment_s(self) -> tuple[float, float]:
        """(energy, ∫ t·energy) of the uncertain part over the whole IR."""
        subtracted = self.noise * self.end
        return self.tail + subtracted, self.tail_moment_s() + subtracted * 0.5 * self.end / self.fs_hz

    def centre_time_s(self) -> float:
        if self._centre_time_s is None:
            self._centre_time_s = self._centre_time()
        return self._centre_time_s

    def _centre_time(self) -> float:
        # Σ j·(h²_j − noise) = M·Σ b·block_b + Σ_b Σ_r r·(h²_(Mb+r) − noise), r = 0 … M − 1 within each block
        m = self.factor
        moment = float((np.arange(self.blocks.size) * self.blocks).sum()) * m  # not BLAS: decay._line_fit
        if m > 1:
            within = self.band.energy[: self.end].reshape(-1, m) * np.arange(m)
            moment += float(within.sum()) - self.noise * self.blocks.size * m * (m - 1) / 2.0
        moment_s = moment / self.fs_hz
        return (moment_s + self.tail_moment_s()) / self.total

    def split(self, te_ms: float) -> tuple[float, float]:
        """(early, late) energy around ``te_ms``."""
        if te_ms <= 0:
            raise ValueError(f"te_ms must be > 0 ms, got {te_ms}")
        late = self.after(int(round(te_ms * 1e-3 * self.fs_hz)))
        return self.total - late, late

    def clarity_db(self, te_ms: float = 80.0) -> float:
        early, late = self.split(te_ms)
        if late <= 0.0:
            raise ValueError(f"no energy after {te_ms} ms: clarity is infinite")
        if early <= 0.0:
            raise ValueError(f"no energy before {te_ms} ms: clarity is −∞")
        return 10.0 * math.log10(early / late)

    def definition(self, te_ms: float = 50.0) -> float:
        early, late = self.split(te_ms)
        return early / (early + late)

    def direct_to_reverberant_db(self, peak: int) -> float:
        half = int(round(DIRECT_HALF_WINDOW_S * self.fs_hz))
        after_direct = self.after(peak + half + 1)
        direct = self.after(max(0, peak - half)) - after_direct
        if after_direct <= 0.0 or direct <= 0.0:
            raise ValueError("direct-to-reverberant ratio undefined: no direct or no reverberant energy")
        return 10.0 * math.log10(direct / after_direct)


def clarity_db(ir: np.ndarray, fs_hz: float, te_ms: float = 80.0, *, truncation: Truncation | None = None) -> float:
    """Clarity C_te in dB (ISO 3382-1 A.2.4): te_ms = 50 → C50, 80 → C80."""
    return EnergyDecay(ir, fs_hz, truncation).clarity_db(te_ms)


def definition(ir: np.ndarray, fs_hz: float, te_ms: float = 50.0, *, truncation: Truncation | None = None) -> float:
    """Definition D50 (0…1) (ISO 3382-1 A.2.5); ``te_ms`` other than 50 gives D_te."""
    return EnergyDecay(ir, fs_hz, truncation).definition(te_ms)


def centre_time_s(ir: np.ndarray, fs_hz: float, *, truncation: Truncation | None = None) -> float:
    """Centre time Ts in s (ISO 3382-1 A.2.6)."""
    return EnergyDecay(ir, fs_hz, truncation).centre_time_s()


def direct_to_reverberant_db(
    ir: np.ndarray, fs_hz: float, *, peak_index: int | None = None, truncation: Truncation | None = None
) -> float:
    """Direct-to-reverberant ratio in dB: energy within ±2.5 ms of the direct peak over all energy after.

    ``peak_index`` defaults to argmax |h| (pass the broadband peak when ``ir`` is band-filtered).
    Energy before the window (pre-delay noise) is not counted.
    """
    peak = int(np.argmax(np.abs(ir))) if peak_index is None else int(peak_index)
    return EnergyDecay(ir, fs_hz, truncation).direct_to_reverberant_db(peak)


def refusals(e: EnergyDecay, peak_index: int) -> dict[str, str | None]:
    """Which energy parameters the observed decay ``e`` supports: ``{name: reason text or None}``;
    ``peak_index``: the broadband direct-sound peak (for DRR).

    Names ``c50_db``, ``c80_db``, ``d50``, ``centre_time_s``, ``drr_db``; a reason means code
    `codes.INSUFFICIENT_DYNAMIC_RANGE`. The rules (module docstring), "uncertain" being the tail plus the
    subtracted noise: uncertain ≤ 20.6 % of the energy after te (C50, C80) or after the direct window
    (DRR); ≤ 5 % of the total (D50); it moves Ts by ≤ 10 ms.
    """
    out: dict[str, str | None] = {}

    def share_reason(label: str, tail: float, base: float, limit: float, what: str) -> str | None:
        share = tail / base if base > 0 else 1.0
        if share <= limit:
            return None
        return (
            f"too little dynamic range for {label}: {100 * share:.0f} % of {what} is not measured above "
            f"the noise (subtracted noise and extrapolated tail), more than {100 * limit:.1f} %"
        )

    for name, te_ms in (("c50_db", 50.0), ("c80_db", 80.0)):
        n = int(round(te_ms * 1e-3 * e.fs_hz))
        out[name] = share_reason(name[:3].upper(), e.uncertain_after(n), e.after(n), MAX_TAIL_SHARE_CLARITY, f"the energy after {te_ms:g} ms")
    uncertain, uncertain_moment = e.uncertain_moment_s()
    out["d50"] = share_reason("D50", uncertain, e.total, MAX_TAIL_SHARE_DEFINITION, "the energy")
    effect_s = abs(uncertain_moment - e.centre_time_s() * uncertain) / e.total
    out["centre_time_s"] = (
        None
        if effect_s <= MAX_TAIL_EFFECT_TS_S
        else f"too little dynamic range for Ts: the energy not measured above the noise moves it by {1e3 * effect_s:.0f} ms > 10 ms"
    )
    n = peak_index + int(round(DIRECT_HALF_WINDOW_S * e.fs_hz)) + 1
    out["drr_db"] = share_reason("DRR", e.uncertain_after(n), e.after(n), MAX_TAIL_SHARE_CLARITY, "the reverberant energy")
    return out
