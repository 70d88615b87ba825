"""``sonalyze serve --https``: the gateway over TLS with a certificate made once for this machine and
reused, the LAN URL and its QR code printed, a given certificate used as given.

Independent checks: the certificate is read back by OpenSSL (the ``ssl`` module, ``openssl`` command),
the machine's addresses come from ``ip -4 addr``, the QR code is decoded by zxing-cpp.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import zxingcpp
from websockets.asyncio.client import connect

from sonalyze.tls import ensure_self_signed, lan_urls
from tests.support.servers import REPO_ROOT, Backend

pytestmark = pytest.mark.slow
TOKEN = "https-test-internal-token"


def _ip_addr_ipv4() -> list[str]:
    """This machine's IPv4 addresses as ``ip`` lists them, minus loopback and link-local."""
    output = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", output)
    return sorted({ip for ip in found if not ip.startswith(("127.", "169.254."))})


def _san(cert_path: Path) -> set[tuple[str, str]]:
    """subjectAltName entries as OpenSSL decodes them (``("DNS", name)``, ``("IP Address", ip)``)."""
    return set(ssl._ssl._test_decode_cert(str(cert_path))["subjectAltName"])  # noqa: SLF001 - the stdlib's own decoder


def _trusting(cert_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_path))


def _served_certificate(port: int) -> bytes:
    """The DER certificate the server presents on 127.0.0.1:``port``."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


def _qr_codes_in(text: str) -> list[str]:
    """Decode every QR code drawn with half blocks in ``text`` (a glyph is a light module, a space a dark one)."""
    lines = [line for line in text.splitlines() if line and set(line) <= set("█▀▄ ") and "█" in line]
    width = max(len(line) for line in lines)
    pixels = np.zeros((2 * len(lines), width), dtype=np.uint8)
    top = {"█": 255, "▀": 255, "▄": 0, " ": 0}
    bottom = {"█": 255, "▀": 0, "▄": 255, " ": 0}
    for row, line in enumerate(lines):
        for column, glyph in enumerate(line):
            pixels[2 * row, column], pixels[2 * row + 1, column] = top[glyph], bottom[glyph]
    image = np.kron(pixels, np.ones((6, 6), dtype=np.uint8))
    return [code.text for code in zxingcpp.read_barcodes(image, try_invert=False)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("https-data")


@pytest.fixture(scope="module")
def https_backend(data_dir):
    backend = Backend(data_dir, ("--https",), env={"INTERNAL_AUTH_TOKEN": TOKEN}).start()
    yield backend
    backend.stop()


def test_app_and_health_over_tls_trusting_the_generated_certificate(https_backend, data_dir):
    cert = data_dir / "tls" / "cert.pem"
    assert https_backend.url.startswith("https://")
    with httpx.Client(verify=_trusting(cert), timeout=10) as client:
        page = client.get(https_backend.url + "/")
        assert page.status_code == 200
        assert page.content == (REPO_ROOT / "src" / "sonalyze" / "webapp" / "index.html").read_bytes()
        assert client.get(https_backend.url + "/join/4HXJEQ").status_code == 200
        assert client.get(https_backend.url + "/healthz").json()["status"] == "ok"
    with pytest.raises(httpx.ConnectError):  # not trusted by the system's CAs: really TLS with our certificate
        httpx.get(https_backend.url + "/healthz", timeout=10)
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on the public port
        httpx.get(https_backend.url.replace("https", "http") + "/healthz", timeout=10)
    assert (data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


async def test_websocket_over_tls(https_backend, data_dir):
    async with connect(https_backend.ws_url + "/ws", ssl=_trusting(data_dir / "tls" / "cert.pem")) as ws:
        await ws.send(json.dumps({"event": "ping", "request_id": 7}))
        answer = json.loads(await ws.recv())
    assert answer["event"] == "pong" and answer["request_id"] == 7


def test_services_push_through_the_plain_loopback_listener(https_backend):
    internal = f"http://127.0.0.1:{https_backend.base_port + 5}"
    body = {"event": "probe", "data": {}, "targets": {"device_ids": ["nobody"]}}
    answer = httpx.post(internal + "/internal/broadcast", json=body, headers={"X-Internal-Token": TOKEN}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["delivered"] == 0
    assert httpx.post(internal + "/internal/broadcast", json=body, timeout=10).status_code == 401


def test_certificate_names_this_machine(https_backend, data_dir):
    expected = {("DNS", socket.gethostname().lower()), ("DNS", "localhost"), ("IP Address", "127.0.0.1")}
    expected |= {("IP Address", ip) for ip in _ip_addr_ipv4()}
    assert _san(data_dir / "tls" / "cert.pem") == expected
    text = subprocess.run(
        ["openssl", "x509", "-in", str(data_dir / "tls" / "cert.pem"), "-noout", "-text"], capture_output=True, text=True, check=True
    ).stdout
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text and "prime256v1" in text


def test_banner_prints_the_url_and_its_qr_code(https_backend):
    log = https_backend.log_text()
    url = f"https://127.0.0.1:{https_backend.base_port}/"
    assert f"  {url}\n" in log
    assert f"  gateway      https://127.0.0.1:{https_backend.base_port}" in log
    assert _qr_codes_in(log) == [url]


def test_lan_urls_name_every_address_when_listening_everywhere():
    addresses = _ip_addr_ipv4()
    assert lan_urls("0.0.0.0", 8443, addresses) == [f"https://{ip}:8443/" for ip in addresses]
    assert lan_urls("192.168.1.20", 8443, addresses) == ["https://192.168.1.20:8443/"]


def test_certificate_is_reused_by_the_next_start(https_backend, data_dir):
    """Runs after the tests above (same module): stops the server and starts it again with SONALYZE_HTTPS=1."""
    cert_path = data_dir / "tls" / "cert.pem"
    first = cert_path.read_bytes()
    served_first = _served_certificate(https_backend.base_port)
    assert https_backend.stop() == 0
    again = Backend(data_dir, env={"SONALYZE_HTTPS": "1", "INTERNAL_AUTH_TOKEN": TOKEN}).start()
    try:
        assert cert_path.read_bytes() == first
        assert _served_certificate(again.base_port) == served_first
        with httpx.Client(verify=_trusting(cert_path), timeout=10) as client:
            assert client.get(again.url + "/healthz").status_code == 200
    finally:
        again.stop()


def test_certificate_is_made_again_when_addresses_change_or_expiry_nears(tmp_path):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    files = ensure_self_signed(tmp_path, "laptop", ["192.168.1.20"], now)
    original = files.cert.read_bytes()
    assert ensure_self_signed(tmp_path, "laptop", ["192.168.1.20"], now + dt.timedelta(days=334)).cert.read_bytes() == original
    assert ensure_self_signed(tmp_path, "laptop", ["192.168.1.20"], now + dt.timedelta(days=336)).cert.read_bytes() != original
    renewed = files.cert.read_bytes()
    ensure_self_signed(tmp_path, "laptop", ["192.168.1.20", "10.0.0.5"], now + dt.timedelta(days=336))
    assert files.cert.read_bytes() != renewed
    assert ("IP Address", "10.0.0.5") in _san(files.cert)
    ensure_self_signed(tmp_path, "desk", ["192.168.1.20", "10.0.0.5"], now + dt.timedelta(days=336))
    assert ("DNS", "desk") in _san(files.cert) and ("DNS", "laptop") not in _san(files.cert)


def test_a_given_certificate_is_served(tmp_path):
    cert, key = tmp_path / "given.pem", tmp_path / "given.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=given",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    backend = Backend(tmp_path / "data", ("--tls-cert", str(cert), "--tls-key", str(key)))
    (tmp_path / "data").mkdir()
    backend.start()
    try:
        with httpx.Client(verify=_trusting(cert), timeout=10) as client:
            assert client.get(backend.url + "/healthz").status_code == 200
        assert not (tmp_path / "data" / "tls").exists()
    finally:
        backend.stop()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "missing.pem is not a file"),
        (["lobby", "--https"], "only the gateway serves HTTPS"),
    ],
)
def test_bad_tls_options_are_refused(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "sonalyze", "serve", *args, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
