"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) holding a
client certificate, for the tests of what device-ca shows in a browser.

Everything is per browser, nothing machine-wide:
- Chromium on Linux reads certificates from the NSS database ``$HOME/.pki/nssdb``; each browser gets
  its own HOME (passed to chromedriver, which passes it on to Chromium) with a fresh database:
  the client certificate and key imported with ``pk12util`` from a PKCS#12 made by openssl, and
  the trust anchors of the given bundle added with ``certutil -t C,,`` as trusted CAs for TLS
  servers. The server certificate is verified for real: no accept-insecure-certs.
- A certificate is selected without the selection dialog (which would hang a headless browser)
  by the profile's content setting ``auto_select_certificate`` (what the enterprise policy
  AutoSelectCertificateForUrls sets), written into the user-data-dir's ``Default/Preferences``
  before start, scoped to the one origin and to the certificate's subject CN. Chromium 156 of
  Debian ignores ``--policy=`` on the command line (stable channel); a file under
  /etc/chromium/policies/managed/ would work but would hold for every browser on the machine.
- A browser without a certificate has an NSS database with the trust anchors only.

``browsers`` is the fixture: ``browsers(origin, trust, cert=None, key=None) -> Browser``; each
browser and its chromedriver are quit when the test ends, passed or failed. ``Browser.open`` and
``Browser.post`` return the document's HTTP status (read from Chromium's network log) and text;
``Browser.screenshot`` saves the whole page under ``tmp_path/screenshots``.
"""
from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 30


@dataclass(frozen=True)
class Page:
    status: int
    text: str


@dataclass
class Browser:
    driver: object                     # selenium.webdriver.Chrome
    screenshots: Path
    home: Path
    shots: list[Path] = field(default_factory=list)

    def open(self, url: str) -> Page:
        """Load ``url``: the HTTP status of the document as the browser received it (0: no HTTP
        answer, e.g. the TLS handshake failed) and the text of the body as the browser renders it
        (empty while a 401 with ``WWW-Authenticate`` holds the browser's login prompt)."""
        self.driver.get_log("performance")                # drop what earlier loads logged
        self.driver.get(url)
        return Page(status=self._document_status(url), text=self.text())

    def post(self, action: str, fields: dict[str, str]) -> Page:
        """Submit a form of the browser's own making from the current page: what a user who edits
        the page (or whose page lacks the button) can send. ``action`` is an absolute URL; the
        form is built through WebDriver, which the page's CSP does not govern, and posted by the
        browser with its client certificate, as a click on a real form would."""
        self.driver.get_log("performance")
        self.driver.execute_script(
            "const form = document.createElement('form'); form.method = 'post'; form.action = arguments[0];"
            "for (const [name, value] of Object.entries(arguments[1])) {"
            "  const input = document.createElement('input'); input.type = 'hidden'; input.name = name;"
            "  input.value = value; form.appendChild(input); }"
            "document.body.appendChild(form); form.submit();", action, fields)
        deadline, status = time.monotonic() + PAGE_TIMEOUT, 0
        while time.monotonic() < deadline:
            status = status or self._document_status(action)          # each read drains the log
            if status and self.driver.execute_script("return document.readyState") == "complete" \
                    and self.driver.current_url == action:
                return Page(status=status, text=self.text())
            time.sleep(0.05)
        raise AssertionError(f"no answer to the form posted to {action}")

    def _document_status(self, url: str) -> int:
        status = 0
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.responseReceived" and message["params"]["type"] == "Document" \
                    and message["params"]["response"]["url"] == url:
                status = message["params"]["response"]["status"]
        return status

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def console_messages(self) -> list[str]:
        """What the pages logged to the browser's console since the last call (errors, CSP
        violations, failed loads)."""
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def screenshot(self, name: str) -> Path:
        """The whole page (beyond the window), as PNG under the test's tmp_path/screenshots."""
        path = self.screenshots / f"{len(self.shots):02d}-{name}.png"
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        self.shots.append(path)
        return path

    def quit(self) -> None:
        self.driver.quit()


def tool(path: str) -> str:
    """A missing browser or tool is a failure, never a skip: scripts/setup.sh installs them."""
    found = shutil.which(path)
    if found is None:
        raise AssertionError(f"{path} is missing: run scripts/setup.sh")
    return found


def _run(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr or proc.stdout}")


def nss_database(home: Path, trust: Path, cert: Path | None, key: Path | None) -> Path:
    """``home/.pki/nssdb`` with the self-signed certificates of ``trust`` as trusted CAs and, if
    given, the client certificate and its key."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    _run(tool("certutil"), "-N", "-d", db, "--empty-password")
    anchors = [c for c in x509.load_pem_x509_certificates(trust.read_bytes()) if c.issuer == c.subject]
    if not anchors:
        raise AssertionError(f"{trust} holds no self-signed certificate to trust")
    for i, anchor in enumerate(anchors):
        pem = home / f"anchor-{i}.pem"
        pem.write_bytes(anchor.public_bytes(Encoding.PEM))
        _run(tool("certutil"), "-A", "-d", db, "-n", f"anchor-{i}", "-t", "C,,", "-i", str(pem))
    if cert is not None:
        p12 = home / "client.p12"
        _run(tool("openssl"), "pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-out", str(p12),
             "-passout", "pass:browser", "-name", "client")
        _run(tool("pk12util"), "-i", str(p12), "-d", db, "-W", "browser")
        p12.unlink()
    return nssdb


def auto_select(profile: Path, origin: str, cert: Path) -> None:
    """The content setting that AutoSelectCertificateForUrls sets, for ``origin`` and the client
    certificate's subject CN, in the profile Chromium is about to open."""
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject
    common_names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    pick = {"SUBJECT": {"CN": common_names[0].value}} if common_names else {}
    preferences = {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
        f"{origin},*": {"setting": {"filters": [pick]}}}}}}}
    (profile / "Default").mkdir(parents=True, exist_ok=True)
    (profile / "Default" / "Preferences").write_text(json.dumps(preferences))


def start_browser(directory: Path, screenshots: Path, origin: str, trust: Path, cert: Path | None = None,
                  key: Path | None = None) -> Browser:
    """Headless Chromium under ``directory`` (HOME, profile, chromedriver.log) that trusts the
    anchors of ``trust`` and, with ``cert`` and ``key``, presents that certificate to ``origin``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    home = directory / "home"
    home.mkdir(parents=True)
    nss_database(home, trust, cert, key)
    profile = home / "profile"
    if cert is not None:
        auto_select(profile, origin, cert)
    options = webdriver.ChromeOptions()
    options.binary_location = tool(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    # Network.* events (statuses) and the page's console (CSP violations are reported there)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    environment = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    service = Service(tool(CHROMEDRIVER), env=environment, log_output=str(directory / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)      # quits chromedriver itself if Chrome fails
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        screenshots.mkdir(exist_ok=True)
        return Browser(driver=driver, screenshots=screenshots, home=home)
    except BaseException:
        driver.quit()
        raise


class Browsers:
    """Starts browsers for one test and remembers them, so that one finalizer quits them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Browser] = []

    def __call__(self, origin: str, trust: Path, cert: Path | None = None, key: Path | None = None) -> Browser:
        directory = self.tmp_path / f"browser-{len(self.started)}-{time.monotonic_ns()}"
        directory.mkdir()
        browser = start_browser(directory, self.tmp_path / "screenshots", origin, trust, cert, key)
        self.started.append(browser)
        return browser

    def quit_all(self) -> None:
        with contextlib.ExitStack() as stack:
            for browser in self.started:
                stack.callback(browser.quit)
            self.started.clear()


@pytest.fixture
def browsers(tmp_path) -> Iterator[Browsers]:
    """``browsers(origin, trust, cert=None, key=None) -> Browser``; all quit after the test."""
    started = Browsers(tmp_path)
    try:
        yield started
    finally:
        started.quit_all()
