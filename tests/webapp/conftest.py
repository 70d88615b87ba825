"""The whole backend and Debian's Chromium driven by Playwright, for the web app's end-to-end tests.

Chromium is the system's (``apt-get install chromium``, ``.ci/run`` does it), never a Playwright download:
``executable_path`` is ``shutil.which("chromium")``. Without Chromium or the ``playwright`` package a test
that asks for a browser is skipped with the reason (a failure under ``SONALYZE_REQUIRE_SERVERS``).

A test that fails (an assertion, a wait that timed out, or pytest-timeout) leaves what is needed to tell
why in its artefact folder (``shots``): ``failed-<test>-phone<k>.png`` (a full-page screenshot of every
page), ``...-console.log`` (each page's console and uncaught errors, UTC-stamped like the backend's log),
``...html`` (the page's DOM, hidden tabs included), the backend's whole ``serve.log`` and every job's
uploaded recordings; the report shows the backend log's tail.
"""

from __future__ import annotations

import datetime
import os
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
BACKEND_LOG_TAIL_LINES = 120
"""Lines of the backend's log shown in a failed test's report (the whole log is saved beside the screenshots)."""
CALL_REPORT = pytest.StashKey["pytest.TestReport"]()


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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Keep the test's own outcome for the fixtures' teardown; a failed web app test's report gets the
    backend log's tail."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
        backend = getattr(item, "funcargs", {}).get("webapp_backend")
        if report.failed and backend is not None:
            tail = backend.log_text().splitlines()[-BACKEND_LOG_TAIL_LINES:]
            report.sections.append((f"backend log, last {len(tail)} lines ({backend.log_path})", "\n".join(tail)))
    return report


@pytest.fixture
def shots(tmp_path) -> Path:
    """The test's artefact folder: its screenshots, and what a failure leaves (``SONALYZE_WEBAPP_SCREENSHOTS``
    to choose it; a pytest temporary folder by default, printed)."""
    folder = Path(os.environ.get("SONALYZE_WEBAPP_SCREENSHOTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


async def _leave_evidence(name: str, contexts: list["BrowserContext"], consoles: dict[Any, list[str]], shots: Path, backend: Backend | None) -> None:
    """What a failed test leaves in ``shots`` (module doc). Each page gets a bounded time: a hung page
    must not hide the others."""
    for k, context in enumerate(contexts):
        for j, page in enumerate(context.pages):
            stem = f"failed-{name}-phone{k}" + (f"-{j}" if j else "")
            (shots / f"{stem}-console.log").write_text("\n".join(consoles.get(page, [])) + "\n")
            try:
                await page.screenshot(path=shots / f"{stem}.png", full_page=True, timeout=15000)
                (shots / f"{stem}.html").write_text(await page.content())
            except Exception as exc:  # noqa: BLE001 - the next page's evidence still counts
                print(f"{stem}: no screenshot ({exc!r})")
    if backend is not None:
        shutil.copy(backend.log_path, shots / f"failed-{name}-serve.log")
        for wav in Path(backend.data_dir).rglob("jobs/*/uploads/*.wav"):  # .../jobs/<job_id>/uploads/<name>
            shutil.copy(wav, shots / f"failed-{name}-{wav.parent.parent.name}-{wav.name}")
    print(f"{name} failed: screenshots, console logs and the backend's log in {shots}")


BrowserFactory = Callable[..., Awaitable["BrowserContext"]]


@pytest.fixture
async def launch_browser(tmp_path, shots, request) -> AsyncIterator[BrowserFactory]:
    """A factory of headless Chromium browsers (one per phone), each with a fresh user-data-dir.

    ``await launch_browser(fake_audio_wav=None, mute_audio=True, extra_args=(), **context_options)`` returns a
    Playwright (async API) ``BrowserContext`` with one page open (``context.pages[0]``) at a phone-size viewport.
    ``fake_audio_wav`` adds the fake-microphone flags (the file feeds ``getUserMedia``, permission granted);
    ``mute_audio=False`` drops Playwright's ``--mute-audio`` so the page's output reaches the sound server;
    ``context_options`` go to ``launch_persistent_context`` (``viewport``, ``base_url``, ...).
    Every browser is closed after the test; when the test failed, each page's screenshot and console log
    and the backend's log are left in ``shots`` first (module doc)."""
    executable = chromium_path()
    from playwright.async_api import async_playwright

    contexts: list[BrowserContext] = []
    consoles: dict[Any, list[str]] = {}

    def watch(page) -> None:
        lines = consoles.setdefault(page, [])

        def console(message) -> None:
            where = message.location.get("url")
            lines.append(f"{_utc_now()} {message.type}: {message.text}" + (f" ({where}:{message.location.get('lineNumber')})" if where else ""))

        page.on("console", console)
        page.on("pageerror", lambda error: lines.append(f"{_utc_now()} uncaught: {error}"))
        page.on("crash", lambda _page: lines.append(f"{_utc_now()} the page crashed"))

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
            for page in context.pages:
                watch(page)
            context.on("page", watch)
            return context

        try:
            yield launch
        finally:
            report = request.node.stash.get(CALL_REPORT, None)
            if report is not None and report.failed:
                backend = request.getfixturevalue("webapp_backend") if "webapp_backend" in request.fixturenames else None
                await _leave_evidence(request.node.name, contexts, consoles, shots, backend)
            for context in contexts:
                await context.close()
