"""The simulation against physics and against pyroomacoustics itself (in-process, no server)."""

from __future__ import annotations

import numpy as np
import pyroomacoustics as pra
import pytest
from numpy.testing import assert_allclose

from sonalyze.simulation.engine import simulate
from sonalyze.simulation.schemas import SimulateRequest
from tests.simulation.conftest import flat, shoebox_request

BANDS_HZ = [125, 250, 500, 1000, 2000, 4000, 8000]
MID_BANDS = [BANDS_HZ.index(b) for b in (500, 1000, 2000)]


def run(body: dict, max_rir_s: float = 6.0):
    return simulate(SimulateRequest.model_validate(body), max_rir_s=max_rir_s)


def t30_bands(pair) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in pair.metrics["t30_s"]["bands"]])


@pytest.mark.parametrize("absorption", [0.1, 0.3])
def test_broadband_t30_agrees_with_pyroomacoustics_measure_rt60(absorption) -> None:
    output = run(shoebox_request(material=flat(absorption, 0.2), ray_tracing=True, seed=7))
    [pair] = output.pairs
    ours = pair.metrics["t30_s"]["broadband"]
    theirs = pra.experimental.measure_rt60(pair.rir.astype(float), 16000, decay_db=30)
    assert ours is not None
    assert ours == pytest.approx(theirs, rel=0.05)


@pytest.mark.parametrize(("absorption", "scattering"), [(0.1, 0.5), (0.3, 0.5)])
def test_ray_traced_t30_lies_between_eyring_and_sabine(absorption, scattering) -> None:
    """With ray tracing and scattering the field is close to diffuse: 0.9 Eyring ≤ T30 ≤ 1.35 Sabine."""
    output = run(
        shoebox_request(
            material=flat(absorption, scattering),
            ray_tracing=True,
            seed=11,
            microphones=[(5.0, 2.0, 1.2), (6.5, 4.5, 1.7)],
        )
    )
    sabine = np.array(output.theory["sabine_s"])[MID_BANDS]
    eyring = np.array(output.theory["eyring_s"])[MID_BANDS]
    for pair in output.pairs:
        t30 = t30_bands(pair)[MID_BANDS]
        assert np.all(t30 >= 0.9 * eyring), (t30, eyring)
        assert np.all(t30 <= 1.35 * sabine), (t30, sabine)


def test_pure_image_sources_decay_slower_than_eyring() -> None:
    """An empty shoebox with specular walls only is not a diffuse field: its decay is slower than
    Eyring predicts (documented in docs/simulation.md with the measured ratios)."""
    output = run(shoebox_request(material=flat(0.1), max_order=60, air_absorption=False))
    [pair] = output.pairs
    t30 = t30_bands(pair)
    eyring = np.array(output.theory["eyring_s"])
    for band in (BANDS_HZ.index(1000), BANDS_HZ.index(2000)):
        assert t30[band] > eyring[band], (t30, eyring)


def test_more_absorption_gives_shorter_decay() -> None:
    t30 = []
    for absorption in (0.05, 0.15, 0.4):
        [pair] = run(shoebox_request(material=flat(absorption, 0.3), ray_tracing=True, seed=3)).pairs
        t30.append(t30_bands(pair)[MID_BANDS])
        assert pair.metrics["t30_s"]["broadband"] is not None
    assert np.all(t30[0] > t30[1]) and np.all(t30[1] > t30[2]), t30


WALLS = {"south": flat(0.05), "east": flat(0.2), "north": flat(0.4), "west": "carpet_cotton"}


def polygon_like_the_shoebox(clockwise: bool) -> dict:
    corners = [[0, 0], [8, 0], [8, 6], [0, 6]]
    walls = [WALLS["south"], WALLS["east"], WALLS["north"], WALLS["west"]]  # wall i: corner i → i + 1
    if clockwise:
        corners = corners[::-1]  # (0,6) (8,6) (8,0) (0,0): walls north, east, south, west
        walls = [WALLS["north"], WALLS["east"], WALLS["south"], WALLS["west"]]
    return {"type": "polygon", "corners_m": corners, "height_m": 3.0, "materials": {"walls": walls, "floor": flat(0.1), "ceiling": "plasterboard"}}


@pytest.mark.parametrize("clockwise", [False, True])
def test_a_polygon_room_equal_to_a_shoebox_gives_the_same_result(clockwise) -> None:
    body = shoebox_request(max_order=8, microphones=[(5.0, 2.0, 1.2), (1.0, 5.0, 2.0)])
    body["room"]["materials"] = {**WALLS, "floor": flat(0.1), "ceiling": "plasterboard"}
    box = run(body)
    poly = run({**body, "room": polygon_like_the_shoebox(clockwise)})
    assert_allclose(poly.theory["sabine_s"], box.theory["sabine_s"], rtol=1e-12)
    assert_allclose(poly.theory["eyring_s"], box.theory["eyring_s"], rtol=1e-12)
    for a, b in zip(box.pairs, poly.pairs, strict=True):
        n = min(a.rir.size, b.rir.size)
        assert abs(a.rir.size - b.rir.size) <= 1
        assert np.max(np.abs(a.rir[:n] - b.rir[:n])) <= 1e-3 * np.max(np.abs(a.rir))
        for metric in ("edt_s", "c50_db", "c80_db", "d50"):
            assert_allclose(
                [np.nan if v is None else v for v in b.metrics[metric]["bands"]],
                [np.nan if v is None else v for v in a.metrics[metric]["bands"]],
                rtol=1e-3,
                atol=1e-3,
            )


def test_swapped_wall_materials_change_the_result() -> None:
    """The wall-to-material mapping matters (guards the clockwise reordering above)."""
    body = shoebox_request(max_order=8, microphones=[(7.5, 3.0, 1.5)])
    body["room"]["materials"] = {**WALLS, "floor": flat(0.1), "ceiling": "plasterboard"}
    swapped = {**body["room"]["materials"], "east": WALLS["west"], "west": WALLS["east"]}
    a = run(body).pairs[0].rir
    b = run({**body, "room": {**body["room"], "materials": swapped}}).pairs[0].rir
    n = min(a.size, b.size)
    assert np.max(np.abs(a[:n] - b[:n])) > 0.05 * np.max(np.abs(a))


def test_the_same_seed_gives_the_same_ray_traced_rir() -> None:
    body = shoebox_request(ray_tracing=True, seed=123)
    first, second = run(body), run(body)
    assert first.seed == second.seed == 123
    assert np.array_equal(first.pairs[0].rir, second.pairs[0].rir)
    third = run({**body, "seed": None})
    assert third.seed != 123


def test_pairs_cover_every_source_and_microphone() -> None:
    sources, microphones = [(2, 3, 1.5), (6, 1, 1)], [(5, 2, 1.2), (1, 1, 1), (7, 5, 2)]
    output = run(shoebox_request(sources=sources, microphones=microphones, max_order=10))
    assert [(p.source, p.microphone) for p in output.pairs] == [(s, m) for s in range(2) for m in range(3)]
    for pair in output.pairs:
        assert pair.rir.dtype == np.float32
        assert pair.metrics["fs_hz"] == 16000
        # the onset (ISO 3382-1 A.2.1) follows each pair's own distance, after pyroomacoustics'
        # 40-sample fractional-delay offset
        distance_m = float(np.linalg.norm(np.subtract(sources[pair.source], microphones[pair.microphone])))
        expected_s = distance_m / (331.4 + 0.6 * 20) + 40 / 16000
        assert pair.metrics["onset_s"] == pytest.approx(expected_s, abs=1.5e-3)
    assert output.pyroomacoustics_s > 0 and output.analysis_s > 0


def test_an_rir_too_short_to_analyse_keeps_the_pair_with_a_reason() -> None:
    [pair] = run(shoebox_request(max_order=2, material=flat(0.5))).pairs
    assert pair.metrics is None
    assert "too short" in pair.metrics_reason
    assert pair.rir.size > 0


def test_around_the_corner_of_an_l_shaped_room_there_is_no_direct_sound() -> None:
    """A non-convex polygon: the wall corner blocks the straight path to microphone 1."""
    corners = [[0, 0], [6, 0], [6, 3], [3, 3], [3, 5], [0, 5]]
    material = flat(0.1, 0.3)
    body = shoebox_request(
        sources=[(5.0, 1.5, 1.5)], microphones=[(1.0, 1.5, 1.5), (1.5, 4.5, 1.5)], max_order=6, ray_tracing=True, seed=1
    )
    body["room"] = {"type": "polygon", "corners_m": corners, "height_m": 3.0, "materials": {"walls": material, "floor": material, "ceiling": material}}
    in_sight, hidden = run(body).pairs
    c_m_s, delay_s = 331.4 + 0.6 * 20, 40 / 16000  # pyroomacoustics' fractional-delay offset
    assert in_sight.metrics["onset_s"] == pytest.approx(4.0 / c_m_s + delay_s, abs=1e-3)
    straight_m = float(np.hypot(5.0 - 1.5, 4.5 - 1.5))
    assert hidden.metrics["onset_s"] > straight_m / c_m_s + delay_s + 2e-3  # only reflections arrive
    assert hidden.metrics["drr_db"]["broadband"] < in_sight.metrics["drr_db"]["broadband"] - 2
    assert hidden.metrics["c50_db"]["broadband"] < in_sight.metrics["c50_db"]["broadband"]


def test_simulation_and_predictions_use_the_same_air_absorption() -> None:
    """ISO 9613-1 at the request's temperature and humidity, not pyroomacoustics' coarse table."""
    from sonalyze.simulation.engine import build_room
    from sonalyze.simulation.theory import room_theory

    request = SimulateRequest.model_validate(shoebox_request(temperature_c=22.0, humidity_percent=55.0, ray_tracing=True))
    room = build_room(request, max_rir_s=6.0)
    theory = room_theory(request.room, air_absorption=True, temperature_c=22.0, humidity_percent=55.0)
    assert_allclose(room.air_absorption, theory.air_m_per_m, rtol=1e-9)
    assert room.physics.get_air_absorption()["coeffs"][-1] < 0.7 * theory.air_m_per_m[-1]  # the table it replaces
    dry = build_room(SimulateRequest.model_validate({**shoebox_request(), "air_absorption": False}), max_rir_s=6.0)
    assert dry.air_absorption is None
