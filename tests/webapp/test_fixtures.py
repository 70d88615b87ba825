"""The browser fixtures do what ``conftest.py`` says: Debian's Chromium with the agreed flags, a fake
microphone fed from a WAV file, and the whole backend serving the app."""

from __future__ import annotations

import numpy as np
import soundfile

from tests.webapp.conftest import CHROMIUM_ARGS

TONE_HZ = 1375.0  # not the fake device's own beep, so hearing it proves the file is played
FS_HZ = 44100

MEASURE_TONE_JS = """
async () => {
  const stream = await navigator.mediaDevices.getUserMedia({audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  context.createMediaStreamSource(stream).connect(analyser);
  await new Promise(resolve => setTimeout(resolve, 1500));
  const spectrum = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(spectrum);
  let peak = 0;
  for (let i = 1; i < spectrum.length; i++) if (spectrum[i] > spectrum[peak]) peak = i;
  const sorted = Array.from(spectrum).sort((a, b) => a - b);
  return {peak_hz: peak * context.sampleRate / analyser.fftSize, bin_hz: context.sampleRate / analyser.fftSize,
          peak_over_median_db: spectrum[peak] - sorted[sorted.length >> 1]};
}
"""


async def test_chromium_runs_with_the_agreed_flags(launch_browser):
    muted = await launch_browser()
    await muted.pages[0].goto("chrome://version")
    command_line = await muted.pages[0].locator("#command_line").inner_text()
    for flag in CHROMIUM_ARGS:
        assert flag in command_line.split(), flag
    assert "--mute-audio" in command_line.split()
    assert "--user-data-dir=" in command_line

    audible = await launch_browser(mute_audio=False)
    await audible.pages[0].goto("chrome://version")
    assert "--mute-audio" not in (await audible.pages[0].locator("#command_line").inner_text()).split()


async def test_fake_microphone_plays_the_wav(launch_browser, webapp_backend, tmp_path):
    time_s = np.arange(5 * FS_HZ) / FS_HZ
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, 0.5 * np.sin(2 * np.pi * TONE_HZ * time_s), FS_HZ, subtype="PCM_16")
    context = await launch_browser(fake_audio_wav=wav)
    page = context.pages[0]
    await page.goto(webapp_backend.url + "/")  # a secure context (loopback), as the app is
    heard = await page.evaluate(MEASURE_TONE_JS)
    assert abs(heard["peak_hz"] - TONE_HZ) <= heard["bin_hz"], heard
    assert heard["peak_over_median_db"] > 40, heard


async def test_backend_serves_the_app(launch_browser, webapp_backend):
    page = (await launch_browser()).pages[0]
    response = await page.goto(webapp_backend.url + "/join/4HXJEQ")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    health = await page.request.get(webapp_backend.url + "/healthz")
    assert health.status == 200
