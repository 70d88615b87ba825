"""Room-acoustic analysis: pure functions on numpy arrays, no I/O.

Sweep generation and deconvolution (ISO 18233), octave filtering (IEC 61260-1), decay curves and
reverberation times (ISO 3382-1/-2, Lundeby), energy ratios (ISO 3382-1), STI (IEC 60268-16) and the
JSON-ready report shared by the measurement and simulation services (`report`).
"""

from sonalyze.acoustics.deconvolution import deconvolve_sweep
from sonalyze.acoustics.report import analyze_impulse_response, analyze_sweep_recording
from sonalyze.acoustics.sweep import SweepParams, exponential_sweep, inverse_filter

__all__ = [
    "SweepParams",
    "analyze_impulse_response",
    "analyze_sweep_recording",
    "deconvolve_sweep",
    "exponential_sweep",
    "inverse_filter",
]
