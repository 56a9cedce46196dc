"""Real headless Chromium against the real service and the local simulator.

The service (uvicorn, SQLite in a temporary folder) and the simulator run as
subprocesses on 127.0.0.1; Chromium gets a spoken WAV as its microphone.
Everything here fails loudly when a part is missing: no skips.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.harness import CHROMIUM, chromium_args, wait_js  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "browser-test-pass-1"
SPOKEN = "What does the document say about the launch? Please tell me the date."


def stop(proc):
    """SIGTERM, and time to finish (a loaded machine makes the server's own shutdown slow); then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url, timeout=30, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory):
    for tool in ("espeak-ng", "sox"):
        assert shutil.which(tool), f"{tool} is missing: run `make test` (it installs it)"
    folder = tmp_path_factory.mktemp("audio")
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), SPOKEN], check=True)
    # 48 kHz mono 16-bit. Chromium loops the file: the long tail of silence lets
    # the turn end and the answer finish before the question is asked again.
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(wav), "pad", "0.3", "7.0"], check=True)
    return wav


@pytest.fixture(scope="session")
def simulator():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_sim", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "SIM_API_KEY": "sk-sim-browser-tests"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/_sim/calls", proc=proc)
        yield Simulator(base)
    finally:
        stop(proc)


class Simulator:
    def __init__(self, base_url):
        self.base_url = base_url

    def get(self, path):
        with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
            return json.loads(response.read())

    def post(self, path, body):
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def call(self, call_id):
        return self.get(f"/_sim/calls/{call_id}")

    def configure(self, **settings):
        return self.post("/_sim/config", settings)


class Server(str):
    """The service's base URL, knowing where its SQLite database lives."""

    db_path = None
    env = None

    def manage(self, *args):
        """A management command against the service's database; returns what it printed."""
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                              capture_output=True, text=True)
        return done.stdout

    def sql(self, query, params=()):
        import sqlite3

        with sqlite3.connect(self.db_path) as db:
            return db.execute(query, params).fetchall()


@pytest.fixture(scope="session")
def server(simulator, tmp_path_factory):
    var = tmp_path_factory.mktemp("var")
    port = free_port()
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "SECRET_KEY": "browser-test-secret-key-not-for-production",
        "OPENAI_API_KEY": "",
        "SIM_API_KEY": "sk-sim-browser-tests",
        "OPENAI_BASE_URL": simulator.base_url,
        "MINT_RATE_LIMIT": "200/m",
        # Short, so a vanished tab is noticed within the test; longer than the
        # resend test keeps its socket down.
        "PAGE_GONE_SECONDS": "8",
        "SIDEBAND_WORKER": "inprocess",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "seed_demo", "--password", PASSWORD], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    # One machine, one process: the sideband worker runs inside the server, as with `make run`.
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("uvicorn")), "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "off", "--no-proxy-headers", "--timeout-graceful-shutdown", "5",
         "voiceproject.asgi:application"],
        cwd=ROOT, env=env,
    )
    base = Server(f"http://127.0.0.1:{port}")
    base.db_path = var / "db.sqlite3"
    base.env = env
    try:
        wait_for_http(f"{base}/healthz", proc=proc)
        yield base
    finally:
        stop(proc)


@pytest.fixture
def sim_settings(simulator):
    """Change the simulator's runtime settings for one test; the defaults come back after it."""
    defaults = simulator.get("/_sim/config")
    yield simulator.configure
    simulator.configure(**defaults)


@pytest.fixture(scope="session")
def browser(speech_wav):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args(speech_wav))
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(base_url=server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def sign_in(page, username="alice"):
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")
