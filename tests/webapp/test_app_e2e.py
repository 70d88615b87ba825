"""A whole measurement through the web app's UI in real Chromium: three phones (host/speaker, two microphones).

The microphones hear tests/webapp/fake_capture.py's file (the lobby's sweep through a known room), so the
results screen must show that room's T30 and C80 (computed independently from the impulse response).
The test waits with page functions, which the CSP forbids (eval): contexts use `bypass_csp=True`.
Screenshots of every screen at 390×844 go to the folder the test prints.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.webapp.fake_capture import BANDS_HZ, band_truth, room_ir, write_capture_wav

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SONALYZE_WEBAPP_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


async def _open(context, url: str):
    page = context.pages[0]
    await page.goto(url)
    await page.wait_for_selector("#conn[data-state=online]", timeout=20000)
    return page


async def _name(page, name: str) -> None:
    await page.fill("#device-name", name)
    await page.click("#name-form button")


async def test_whole_session_through_the_ui(webapp_backend, launch_browser, tmp_path):
    shots = _shots(tmp_path)
    wav = tmp_path / "room.wav"
    write_capture_wav(wav)
    host = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), webapp_backend.url)
    await host.screenshot(path=shots / "01-home.png")
    await _name(host, "Speaker")
    await host.fill("#lobby-name", "Test room")
    await host.click("#create-form button")
    await host.wait_for_selector("#lobby-code:not(:empty)")
    code = (await host.text_content("#lobby-code")).strip()
    assert re.fullmatch(r"[A-Z0-9]{6}", code)
    assert (await host.get_attribute("#join-link", "href")).endswith(f"/join/{code}")
    assert await host.locator("#qr svg").count() == 1

    mic1 = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), webapp_backend.url)
    await _name(mic1, "Mic one")
    await mic1.fill("#join-code", code.lower())
    await mic1.click("#join-form button")
    mic2 = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), f"{webapp_backend.url}/join/{code}")  # the deep link
    for page in (mic1, mic2):
        await page.wait_for_function(f"document.querySelector('#lobby-code')?.textContent === '{code}'", timeout=20000)

    await host.wait_for_function("document.querySelectorAll('#participants li').length === 3", timeout=20000)
    selects = host.locator("#participants select")
    for index, role in enumerate(("speaker", "microphone", "microphone")):
        await selects.nth(index).select_option(role)
        await host.wait_for_function(
            f"[...document.querySelectorAll('#participants select')][{index}]?.value === '{role}'", timeout=10000)
    await host.screenshot(path=shots / "02-lobby-host.png", full_page=True)
    await mic1.wait_for_function("[...document.querySelectorAll('#participants .badge')].filter(b => b.textContent === 'microphone').length === 2", timeout=10000)

    await host.click("[data-tab=room]")
    for i, value in enumerate(("6", "5", "3")):
        await host.fill(f"#dim-{i}", value)
    await host.fill("#dim-1", "-2")
    assert "above 0" in await host.text_content("#err-dimensions_m\\.1")  # explained in place
    await host.screenshot(path=shots / "03-room-invalid.png", full_page=True)
    await host.fill("#dim-1", "5")
    await host.click("#share-room")
    await host.wait_for_selector("#room-status:has-text('shared')", timeout=10000)
    await host.screenshot(path=shots / "04-room.png", full_page=True)

    await mic1.reload()  # a phone that reloads finds its lobby, its role and the shared room again
    await mic1.wait_for_selector("#conn[data-state=online]", timeout=20000)
    await mic1.wait_for_function(f"document.querySelector('#lobby-code')?.textContent === '{code}'", timeout=20000)
    await mic1.click("[data-tab=room]")
    assert await mic1.input_value("#dim-0") == "6"

    for page in (host, mic1, mic2):
        await page.click("[data-tab=measure]")
        await page.click("#arm")
        await page.wait_for_selector("#arm-state:has-text('Armed')", timeout=20000)
    assert await mic1.is_visible("#meter-box")
    await mic1.screenshot(path=shots / "05-armed-mic.png", full_page=True)

    await host.click("#start")
    await host.wait_for_selector("#step:has-text('quiet')", timeout=60000)
    await host.screenshot(path=shots / "06-playing-host.png", full_page=True)
    await mic2.screenshot(path=shots / "07-recording-mic.png", full_page=True)
    for page in (host, mic1, mic2):
        await page.wait_for_function("document.querySelectorAll('#results-body table.metrics:not(.spread)').length === 2", timeout=180000)
    await host.screenshot(path=shots / "08-results-host.png", full_page=True)
    await mic1.screenshot(path=shots / "09-results-mic.png")

    ir = room_ir()
    for pair in range(2):
        section = host.locator("#results-body section.pair").nth(pair)
        for band_hz in (500, 1000, 2000, 4000):
            t30_true, c80_true = band_truth(ir, band_hz)
            t30 = float(await section.locator(f"td[data-metric=T30][data-band='{band_hz}']").text_content())
            c80 = float(await section.locator(f"td[data-metric=C80][data-band='{band_hz}']").text_content())
            assert abs(t30 / t30_true - 1) <= 0.05, (pair, band_hz, t30, t30_true)
            assert abs(c80 - c80_true) <= 1.0, (pair, band_hz, c80, c80_true)
        refused = section.locator("td[data-metric=T30][data-band='125']")
        assert (await refused.text_content()).startswith("refused")
        reason = await refused.get_attribute("data-reason")
        assert reason and reason in await section.locator("ol.reasons").text_content()
    assert BANDS_HZ[0] == 125


async def test_denied_microphone_is_explained(webapp_backend, launch_browser, tmp_path):
    page = await _open(await launch_browser(extra_args=["--use-fake-device-for-media-stream"], bypass_csp=True), webapp_backend.url)
    await page.click("#create-form button")
    await page.wait_for_selector("#lobby-code:not(:empty)")
    await page.click("[data-tab=measure]")
    await page.click("#arm")
    await page.wait_for_selector("#arm-error:not([hidden])", timeout=20000)
    assert "denied" in (await page.text_content("#arm-error")).lower()
    await page.screenshot(path=_shots(tmp_path) / "10-denied.png", full_page=True)
