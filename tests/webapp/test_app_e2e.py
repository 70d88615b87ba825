"""A whole measurement through the web app's UI in real Chromium: three phones (host/speaker, two microphones).

The microphones hear tests/webapp/fake_capture.py's file (the lobby's sweep through a known room), so the
results screen must show that room's T30 and C80 (computed independently from the impulse response).
The second microphone joins through the QR code on the host's screen (decoded from a screenshot with
zxing-cpp); the first one reloads in the middle of the session and finds its place again.
Where PulseAudio is installed a fourth test routes the speaker page's real output into the microphone
pages (a null sink and its monitor remapped as the default source of a private daemon).
The test waits with page functions, which the CSP forbids (eval): contexts use `bypass_csp=True`.
Screenshots of every screen at 390×844 go to the folder the test prints (``SONALYZE_WEBAPP_SCREENSHOTS``
to choose it); a failed test leaves there every page's screenshot and console log, the backend's log and
the recordings (``conftest.py``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from sonalyze.lobby.codes import CODE_ALPHABET, CODE_LENGTH
from tests.support.infra import skip_unless_required
from tests.webapp.fake_capture import BANDS_HZ, band_truth, room_ir, write_capture_wav

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Roles a control must have a name for (an unnamed one is unusable with a screen reader).
NAMED_ROLES = ("button", "textbox", "combobox", "radio", "checkbox", "link", "spinbutton", "slider", "tab")
#: What the analysis answers when the audio reaching the page was broken before the app got it: on a
#: loaded machine Chromium's capture thread misses its turn and the stream carries 10 ms of zeros or loses
#: samples (seen: 441 zero samples = one 10 ms capture buffer, with the app's gap_frames 0). The analysis
#: must refuse such a recording, and a person would measure again: the test does, when the app itself lost
#: no block (gap_frames 0 in every upload's capture facts), at most MEASURE_ATTEMPTS times in all.
CAPTURE_FAULTS = frozenset({"dropout", "impulsive_noise", "sample_rate_mismatch"})
MEASURE_ATTEMPTS = 3
FINAL_STEP_LABELS = ("Measurement complete", "Measurement failed", "Measurement cancelled")


async def _open(context, url: str):
    page = context.pages[0]
    await page.goto(url)
    await page.wait_for_selector("#conn[data-state=online]", timeout=30000)
    return page


async def _name(page, name: str) -> None:
    await page.fill("#device-name", name)
    await page.click("#name-form button")


async def _qr_link(page) -> str:
    """The text of the QR code as a phone's camera sees it: decoded from a screenshot of the host's screen."""
    import zxingcpp
    from PIL import Image

    image = Image.open(io.BytesIO(await page.locator("#qr").screenshot()))
    codes = zxingcpp.read_barcodes(image)
    assert len(codes) == 1 and codes[0].format == zxingcpp.BarcodeFormat.QRCode, codes
    return codes[0].text


def _capture_faults(backend) -> dict[str, str]:
    """The refused uploads of the latest analysed job (read from the measurement's job database), when every
    refusal is a capture fault (``CAPTURE_FAULTS``) and the app lost no block; else nothing."""
    with sqlite3.connect(Path(backend.data_dir) / "measurement.db") as db:
        row = db.execute("SELECT body FROM measurement_jobs ORDER BY updated_s DESC LIMIT 1").fetchone()
    job = json.loads(row[0]) if row else {}
    refused = {name: report["error"]["code"] for name, report in (job.get("results") or {}).items() if "error" in report}
    app_lost_blocks = any((upload.get("capture") or {}).get("gap_frames") != 0 for upload in job.get("uploads", []))
    return refused if refused and set(refused.values()) <= CAPTURE_FAULTS and not app_lost_blocks else {}


async def _until_measured(host, backend) -> None:
    """Wait until the host's session is over; measure again (the host's "Measure again") while a recording
    was lost to the browser's capture (``CAPTURE_FAULTS``). Any other outcome is left to the caller's checks."""
    final = f"{list(FINAL_STEP_LABELS)}.includes(document.querySelector('#step').textContent)"
    for attempt in range(1, MEASURE_ATTEMPTS + 1):
        await host.wait_for_function(final, timeout=180000, polling=250)
        faults = _capture_faults(backend)
        if not faults:
            return
        assert attempt < MEASURE_ATTEMPTS, f"every attempt lost a recording to the browser's capture: {faults}"
        warnings.warn(f"attempt {attempt}: the browser's capture broke {faults} (the app lost no block): measuring again", stacklevel=1)
        # not while the host's prediction of the refused session runs: its simulation would starve the next recording
        await host.wait_for_function("!document.querySelector('#results-status').textContent.startsWith('Asking')", timeout=150000, polling=250)
        await host.click("[data-tab=measure]")
        await host.click("#start")
        await host.wait_for_function(f"!{final}", timeout=60000, polling=250)


def _unnamed_controls(aria_yaml: str) -> list[str]:
    """Lines of a Playwright ARIA snapshot that are interactive controls without an accessible name."""
    pattern = re.compile(rf"^\s*- ({'|'.join(NAMED_ROLES)})(\s*\[[^\]]*\])*\s*:?\s*$")
    return [line for line in aria_yaml.splitlines() if pattern.match(line)]


async def test_whole_session_through_the_ui(webapp_backend, launch_browser, shots, tmp_path):
    wav = tmp_path / "room.wav"
    write_capture_wav(wav)
    # the fake microphone file loops one sweep every PERIOD_S: one sweep per job (the app asks for 2 by default)
    host = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), webapp_backend.url.rstrip("/") + "/?sweep_count=1")
    await host.screenshot(path=shots / "01-home.png")
    await _name(host, "Speaker")
    await host.fill("#lobby-name", "Test room")
    await host.click("#create-form button")
    await host.wait_for_selector("#lobby-code:not(:empty)")
    code = (await host.text_content("#lobby-code")).strip()
    assert re.fullmatch(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}", code)  # the lobby's code as it is, readable aloud
    link = await host.get_attribute("#join-link", "href")
    assert link == f"{webapp_backend.url}/join/{code}"
    assert await _qr_link(host) == link  # the QR code on the host's screen is the deep link

    mic1 = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), webapp_backend.url)
    await _name(mic1, "Mic one")
    await mic1.fill("#join-code", code.lower())
    await mic1.click("#join-form button")
    mic2 = await _open(await launch_browser(fake_audio_wav=wav, bypass_csp=True), await _qr_link(host))  # scanned
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
    await mic2.screenshot(path=shots / "03-lobby-guest.png", full_page=True)

    await host.click("[data-tab=room]")
    for i, value in enumerate(("6", "5", "3")):
        await host.fill(f"#dim-{i}", value)
    await host.fill("#dim-1", "-2")
    assert "above 0" in await host.text_content("#err-dimensions_m\\.1")  # explained in place
    await host.screenshot(path=shots / "04-room-invalid.png", full_page=True)
    await host.fill("#dim-1", "5")
    await host.click("#share-room")
    await host.wait_for_selector("#room-status:has-text('shared')", timeout=10000)
    await host.screenshot(path=shots / "05-room.png", full_page=True)

    await mic1.reload()  # a phone that reloads finds its lobby, its role and the shared room again
    await mic1.wait_for_selector("#conn[data-state=online]", timeout=30000)
    await mic1.wait_for_function(f"document.querySelector('#lobby-code')?.textContent === '{code}'", timeout=20000)
    await mic1.click("[data-tab=room]")
    assert await mic1.input_value("#dim-0") == "6"

    for page in (host, mic2):  # mic1 is armed after its reload below: until then the session waits for it
        await page.click("[data-tab=measure]")
        await page.click("#arm")
        await page.wait_for_selector("#arm-state:has-text('Armed')", timeout=20000)
    assert await mic2.is_visible("#meter-box")
    await mic2.screenshot(path=shots / "06-armed-mic.png", full_page=True)

    await host.click("#start")
    # mid-session (the session waits for mic1, so the reload always lands before the recording, however
    # loaded the machine): it must find the session, ask to be armed, and carry on
    await host.wait_for_selector("#session-devices li.waiting:has-text('Mic one')", timeout=60000)
    await mic1.reload()
    await mic1.wait_for_selector("#conn[data-state=online]", timeout=30000)
    await mic1.wait_for_selector("#activity:has-text('tap')", timeout=60000)
    await mic1.screenshot(path=shots / "07-rejoined-mic.png", full_page=True)
    await mic1.click("#arm")
    await host.wait_for_selector("#step:has-text('quiet')", timeout=60000)
    await host.screenshot(path=shots / "08-playing-host.png", full_page=True)
    await mic2.screenshot(path=shots / "09-recording-mic.png", full_page=True)
    await mic2.wait_for_selector("#activity:has-text('Uploaded')", state="attached", timeout=120000)  # the WAV built and POSTed by upload-worker.js
    await mic2.screenshot(path=shots / "09b-uploaded-mic.png", full_page=True)
    await _until_measured(host, webapp_backend)
    for page in (host, mic1, mic2):
        await page.wait_for_function("document.querySelectorAll('#results-body table.metrics:not(.spread)').length === 2", timeout=60000)
    await host.screenshot(path=shots / "10-results-host.png", full_page=True)
    await mic1.screenshot(path=shots / "11-results-mic.png")

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

    # a room was shared: measured against predicted comes by itself on the host's screen (one simulation
    # per session); the others have the button
    await host.wait_for_selector("#results-body svg[aria-label='T30 measured against predicted'], #results-body .prediction-error", timeout=150000)
    assert await host.locator("#results-body .prediction-error").count() == 0, await host.text_content("#results-body .prediction-error")
    assert await mic2.get_by_role("button", name="Predict from the shared room").is_visible()
    await host.locator("#results-body svg[aria-label='T30 measured against predicted']").scroll_into_view_if_needed()
    await host.screenshot(path=shots / "12-predicted-host.png")
    assert not _unnamed_controls(await host.locator("body").aria_snapshot())

    # a lobby push that changes neither the results nor a name does not re-draw the results (a 90 ms task
    # on a loaded phone when it came while recording): the same table element stays
    await mic2.evaluate("document.querySelector('#results-body table.metrics').dataset.kept = 'yes'")
    await host.click("[data-tab=lobby]")
    await host.locator("#participants select").filter(has=host.locator("option[value=speaker]:checked")).first.select_option("microphone")
    await mic2.wait_for_function("![...document.querySelectorAll('#participants .badge')].some((b) => b.textContent === 'speaker')")
    assert await mic2.locator("#results-body table.metrics[data-kept=yes]").count() == 1


async def test_denied_microphone_is_explained(webapp_backend, launch_browser, shots):
    page = await _open(await launch_browser(extra_args=["--use-fake-device-for-media-stream"], bypass_csp=True), webapp_backend.url)
    await page.click("#create-form button")
    await page.wait_for_selector("#lobby-code:not(:empty)")
    await page.click("[data-tab=measure]")
    await page.click("#arm")
    await page.wait_for_selector("#arm-error:not([hidden])", timeout=20000)
    assert "denied" in (await page.text_content("#arm-error")).lower()
    assert await page.text_content("#arm") == "Arm this phone"  # not shown as armed
    assert await page.is_disabled("#start")  # no roles yet: the reason is next to it
    assert "speaker role" in await page.text_content("#start-help")
    await page.screenshot(path=shots / "13-denied.png", full_page=True)


async def test_keyboard_and_screen_reader_basics(webapp_backend, launch_browser, shots):
    """Every control has an accessible name, the focus order follows the screen, the app works by keyboard."""
    page = await _open(await launch_browser(bypass_csp=True), webapp_backend.url)
    assert not _unnamed_controls(await page.locator("body").aria_snapshot())
    focused = []
    for _ in range(6):
        await page.keyboard.press("Tab")
        focused.append(await page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert focused == ["device-name", "Save name", "lobby-name", "Create a lobby", "join-code", "Join"]

    await page.get_by_role("textbox", name="Room or lobby name").fill("Keyboard room")
    await page.get_by_role("textbox", name="Room or lobby name").press("Enter")  # the form submits
    await page.wait_for_selector("#lobby-code:not(:empty)")
    await page.get_by_role("button", name="Room", exact=True).focus()
    await page.keyboard.press("Enter")
    assert await page.get_by_role("button", name="Room", exact=True).get_attribute("aria-current") == "page"
    assert await page.get_by_role("region", name="The room").is_visible()
    await page.get_by_role("textbox", name="Length x (m)").fill("0")
    invalid = page.locator("#dim-0[aria-invalid=true]")
    assert await invalid.count() == 1  # the wrong field is marked for assistive technology too
    described = await page.get_attribute("#dim-0", "aria-describedby")
    assert described and "above 0" in await page.text_content(f"[id='{described}']")
    for tab in ("Lobby", "Room", "Measure", "Results"):
        await page.get_by_role("button", name=tab, exact=True).click()
        assert not _unnamed_controls(await page.locator("body").aria_snapshot()), tab
    await page.get_by_role("button", name="Lobby", exact=True).click()
    assert await page.get_by_role("img", name="QR code of the join link").is_visible()
    await page.screenshot(path=shots / "14-keyboard-lobby.png", full_page=True)


@pytest.fixture
def pulse_loop(tmp_path):
    """A private PulseAudio daemon whose only sink is a null sink and whose default source is that sink's
    monitor remapped as a microphone: what any page plays, every page records. Yields ``PULSE_SERVER``."""
    if shutil.which("pulseaudio") is None:
        skip_unless_required("PulseAudio is not installed (apt-get install pulseaudio)")
    runtime = tmp_path / "pulse"
    runtime.mkdir()
    socket = runtime / "native"
    env = {**os.environ, "HOME": str(runtime), "XDG_RUNTIME_DIR": str(runtime), "PULSE_RUNTIME_PATH": str(runtime), "PULSE_STATE_PATH": str(runtime)}
    daemon = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disable-shm=yes", "--log-target=stderr",
         "-L", f"module-native-protocol-unix socket={socket} auth-anonymous=1",
         "-L", "module-null-sink sink_name=loop rate=48000",
         "-L", "module-remap-source master=loop.monitor source_name=loopmic"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = f"unix:{socket}"
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env={**env, "PULSE_SERVER": server}, capture_output=True).returncode != 0:
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.stderr.read().decode() if daemon.poll() is not None else "pulseaudio did not start"
            time.sleep(0.2)
        yield server
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


async def test_speaker_output_reaches_the_microphones_through_pulseaudio(webapp_backend, launch_browser, pulse_loop, shots):
    """The real play-and-record loop: the speaker page's output goes to a null sink whose monitor is the
    microphone pages' input, so the sweep's playback and timing are the browsers' own. The loop has no
    room: each microphone's analysis must find the whole sweep (a table, not an error: no dropout, the
    recording window holds it) and, with nothing to decay, refuse T30 with its reason."""
    env = {**os.environ, "PULSE_SERVER": pulse_loop}
    phones = []
    for _ in range(3):
        context = await launch_browser(mute_audio=False, extra_args=["--use-fake-ui-for-media-stream"], env=env, bypass_csp=True)
        phones.append(await _open(context, webapp_backend.url))
    host, *mics = phones
    await host.click("#create-form button")
    await host.wait_for_selector("#lobby-code:not(:empty)")
    code = (await host.text_content("#lobby-code")).strip()
    for mic in mics:
        await mic.fill("#join-code", code)
        await mic.click("#join-form button")
    await host.wait_for_function("document.querySelectorAll('#participants select').length === 3", timeout=20000)
    for index, role in enumerate(("speaker", "microphone", "microphone")):
        await host.locator("#participants select").nth(index).select_option(role)
        await host.wait_for_function(f"[...document.querySelectorAll('#participants select')][{index}]?.value === '{role}'", timeout=10000)
    for mic in mics:
        await mic.wait_for_function("[...document.querySelectorAll('#participants .badge')].filter(b => b.textContent === 'microphone').length === 2", timeout=10000)
    for page in phones:
        await page.click("[data-tab=measure]")
        await page.click("#arm")
        await page.wait_for_selector("#arm-state:has-text('Armed')", timeout=20000)
    await host.click("#start")
    await _until_measured(host, webapp_backend)
    for page in phones:
        await page.wait_for_function("document.querySelectorAll('#results-body section.pair').length === 2", timeout=60000)
    await host.screenshot(path=shots / "15-pulse-loop-results.png", full_page=True)
    for pair in range(2):
        section = host.locator("#results-body section.pair").nth(pair)
        assert await section.locator("p.error").count() == 0, await section.text_content()
        assert await section.locator("table.metrics").count() == 1
        t30 = section.locator("td[data-metric=T30][data-band='1000']")
        assert (await t30.text_content()).startswith("refused")  # a wire has no reverberation
        assert await t30.get_attribute("data-reason")
