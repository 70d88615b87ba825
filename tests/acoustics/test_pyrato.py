"""Agreement with an independent implementation: pyrato 1.1 (pyfar), on the same impulse responses.

pyrato gets the same octave-band IRs (`bands.octave_band_irs`: our zero-phase filters, from the ISO 3382-1 onset), so the
comparison covers the decay, noise and energy algorithms: its Lundeby EDC, linear-regression T20/T30,
clarity, and its own STI (with its own filter bank) on the broadband IR.
"""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sonalyze.acoustics import analyze_impulse_response, deconvolve_sweep
from sonalyze.acoustics.bands import OCTAVE_BANDS_HZ, octave_band_irs
from sonalyze.acoustics.onset import find_onset

from .conftest import record
from .synthetic import decaying_multisine, gaussian_decay

pf = pytest.importorskip("pyfar")
ra = pytest.importorskip("pyrato")

FS_HZ = 48000


def _pyrato(ir: np.ndarray, fs_hz: int) -> dict[str, np.ndarray]:
    onset = find_onset(ir)
    band_irs = pf.Signal(np.stack(list(octave_band_irs(ir, fs_hz, onset).values())), fs_hz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edc = ra.edc.energy_decay_curve_lundeby(
            band_irs,
            smoothing_parameter=np.array(OCTAVE_BANDS_HZ, dtype=float),
            time_shift=False,
            channel_independent=True,
            normalize=True,
        )
        return {
            "t20_s": ra.parameters.reverberation_time_linear_regression(edc, "T20").ravel(),
            "t30_s": ra.parameters.reverberation_time_linear_regression(edc, "T30").ravel(),
            "c80_db": ra.parameters.clarity(edc, 80).ravel(),
            "sti": float(np.ravel(ra.parameters.speech_transmission_index_indirect(pf.Signal(ir[onset:], fs_hz)))[0]),
        }


def _room_ir_from_sweep(sweep_params, room_ir):
    recording, _ = record(sweep_params, room_ir, seed=31, noise_db=-35.0)  # a noisy phone
    return deconvolve_sweep(recording, sweep_params, 2.0)


@pytest.mark.parametrize(
    "make_ir",
    [
        lambda: decaying_multisine([2.0, 1.7, 1.4, 1.2, 1.0, 0.8, 0.6], FS_HZ, 3.0, seed=3, noise_floor_db=-60.0, pre_delay_s=0.1),
        lambda: decaying_multisine(0.5, FS_HZ, 2.0, seed=4, noise_floor_db=-55.0),
        lambda: gaussian_decay(1.2, FS_HZ, 3.0, seed=5) + 1e-3 * np.random.default_rng(6).standard_normal(3 * FS_HZ),
    ],
    ids=["per-band-T", "short-T", "gaussian-noise-floor"],
)
def test_agrees_with_pyrato(make_ir):
    ir = make_ir()
    ours = analyze_impulse_response(ir, FS_HZ, include_curves=False)
    theirs = _pyrato(ir, FS_HZ)
    assert_allclose(ours["t20_s"]["bands"], theirs["t20_s"], rtol=0.05)
    assert_allclose(ours["t30_s"]["bands"], theirs["t30_s"], rtol=0.05)
    assert_allclose(ours["c80_db"]["bands"], theirs["c80_db"], atol=0.5)
    assert_allclose(ours["sti"]["value"], theirs["sti"], atol=0.02)


def test_agrees_with_pyrato_on_a_deconvolved_sweep(sweep_params, room_ir):
    ir = _room_ir_from_sweep(sweep_params, room_ir)
    ours = analyze_impulse_response(ir, FS_HZ, include_curves=False)
    theirs = _pyrato(ir, FS_HZ)
    assert_allclose(ours["t30_s"]["bands"], theirs["t30_s"], rtol=0.05)
    assert_allclose(ours["c80_db"]["bands"], theirs["c80_db"], atol=0.5)
    assert_allclose(ours["sti"]["value"], theirs["sti"], atol=0.02)
