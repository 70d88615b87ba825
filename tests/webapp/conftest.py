"""The whole backend and Debian's Chromium driven by Playwright, for the web app's end-to-end tests.

Chromium is the system's (``apt-get install chromium``, ``.ci/run`` does it), never a Playwright download:
``executable_path`` is ``shutil.which("chromium")``. Without Chromium or the ``playwright`` package a test
that asks for a browser is skipped with the reason (a failure under ``SONALYZE_REQUIRE_SERVERS``).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.infra import skip_unless_required
from tests.support.servers import Backend

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PHONE_VIEWPORT = {"width": 390, "height": 844}


def fake_microphone_args(wav: Path) -> list[str]:
    """Chromium's fake capture device fed from ``wav`` (44.1 kHz mono 16-bit plays bit-exactly, looped)."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


def chromium_path() -> str:
    """Debian's Chromium, or skip (fail in CI) when it or Playwright is missing."""
    path = shutil.which("chromium")
    if path is None:
        skip_unless_required("Chromium is not installed (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        skip_unless_required("the playwright package is not installed (pip install -e '.[test]')")
    return path


@pytest.fixture(scope="session")
def webapp_backend(tmp_path_factory) -> Iterator[Backend]:
    """``sonalyze serve`` (all five services, embedded defaults) in a fresh data folder on free ports.

    One per test session; ``.url`` is the gateway (``http://127.0.0.1:PORT``, the app at ``/``),
    ``.log_text()`` the services' output. Create a fresh lobby in each test."""
    backend = Backend(tmp_path_factory.mktemp("webapp-backend")).start()
    yield backend
    backend.stop()


BrowserFactory = Callable[..., Awaitable["BrowserContext"]]


@pytest.fixture
async def launch_browser(tmp_path) -> AsyncIterator[BrowserFactory]:
    """A factory of headless Chromium browsers (one per phone), each with a fresh user-data-dir.

    ``await launch_browser(fake_audio_wav=None, mute_audio=True, extra_args=(), **context_options)`` returns a
    Playwright (async API) ``BrowserContext`` with one page open (``context.pages[0]``) at a phone-size viewport.
    ``fake_audio_wav`` adds the fake-microphone flags (the file feeds ``getUserMedia``, permission granted);
    ``mute_audio=False`` drops Playwright's ``--mute-audio`` so the page's output reaches the sound server;
    ``context_options`` go to ``launch_persistent_context`` (``viewport``, ``base_url``, ...).
    Every browser is closed after the test."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    contexts: list[BrowserContext] = []
    async with async_playwright() as playwright:

        async def launch(
            *, fake_audio_wav: Path | None = None, mute_audio: bool = True, extra_args: Sequence[str] = (), **context_options: Any
        ) -> BrowserContext:
            args = [*CHROMIUM_ARGS, *(fake_microphone_args(fake_audio_wav) if fake_audio_wav else []), *extra_args]
            user_data_dir = tmp_path / f"chromium-profile-{len(contexts)}"
            context = await playwright.chromium.launch_persistent_context(
                user_data_dir,
                executable_path=executable,
                headless=True,
                args=args,
                ignore_default_args=[] if mute_audio else ["--mute-audio"],
                **{"viewport": PHONE_VIEWPORT, **context_options},
            )
            contexts.append(context)
            return context

        try:
            yield launch
        finally:
            for context in contexts:
                await context.close()
