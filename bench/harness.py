"""Start the service and the simulator as subprocesses on loopback for a benchmark."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password-123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=5).read()


@contextlib.contextmanager
def simulator():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "realtime_sim", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env={**os.environ, "SIM_API_KEY": "sk-sim-bench"}, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/_sim/calls", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def service(simulator_url, users, extra_env=None, setup=""):
    """daphne on a fresh database with `users` bench users (and `setup` code run once); yields the base URL."""
    with tempfile.TemporaryDirectory() as var:
        env = {
            **os.environ, "VAR_DIR": var, "SECRET_KEY": "bench-secret-key", "OPENAI_API_KEY": "",
            "SIM_API_KEY": "sk-sim-bench", "OPENAI_BASE_URL": simulator_url, "MINT_RATE_LIMIT": "1000000/m",
            "DATABASE_URL": "", "REDIS_URL": "", **(extra_env or {}),
        }
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        create = (
            "from django.contrib.auth import get_user_model; from teams_app.models import Team, Membership\n"
            "t = Team.objects.create(name='Bench'); U = get_user_model()\n"
            f"for i in range({users}):\n"
            f"    Membership.objects.create(team=t, user=U.objects.create_user(f'bench{{i}}', password='{PASSWORD}'))\n"
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", create + setup], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        port = free_port()
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
             "voiceproject.asgi:application"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(f"{base}/healthz", proc)
            yield base
        finally:
            proc.terminate()
            proc.wait(10)


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
