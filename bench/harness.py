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


POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
REDIS_BASE_URL = "redis://127.0.0.1:6379"
# A Redis database number of its own, flushed before and after a run.
REDIS_DB = 11


@contextlib.contextmanager
def _postgres_database():
    """A fresh PostgreSQL database on 127.0.0.1 for one run, dropped afterwards."""
    import psycopg

    name = f"voice_run_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _flush_redis():
    import redis

    redis.Redis.from_url(f"{REDIS_BASE_URL}/{REDIS_DB}", socket_timeout=5).flushdb()


class Topology:
    """Running server processes (and maybe a sideband worker) sharing one database."""

    def __init__(self, bases, env):
        self.bases = bases
        self.env = env

    def manage(self, *args, **kwargs):
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True, **kwargs)


@contextlib.contextmanager
def topology(simulator_url, users, processes=1, shared=False, worker=False, extra_env=None, setup=""):
    """`processes` daphne servers; with `shared`, on PostgreSQL and Redis (else SQLite, in-memory layer)."""
    with contextlib.ExitStack() as stack:
        var = stack.enter_context(tempfile.TemporaryDirectory())
        env = {
            **os.environ, "VAR_DIR": var, "SECRET_KEY": "bench-secret-key", "OPENAI_API_KEY": "",
            "SIM_API_KEY": "sk-sim-bench", "OPENAI_BASE_URL": simulator_url, "MINT_RATE_LIMIT": "1000000/m",
            "DATABASE_URL": "", "REDIS_URL": "", **(extra_env or {}),
        }
        if shared:
            env["DATABASE_URL"] = stack.enter_context(_postgres_database())
            env["REDIS_URL"] = f"{REDIS_BASE_URL}/{REDIS_DB}"
            _flush_redis()
            stack.callback(_flush_redis)
        top = Topology([], env)
        top.manage("migrate", "--noinput", "-v0")
        create = (
            "from django.contrib.auth import get_user_model; from teams_app.models import Team, Membership\n"
            "t = Team.objects.create(name='Bench'); U = get_user_model()\n"
            f"for i in range({users}):\n"
            f"    Membership.objects.create(team=t, user=U.objects.create_user(f'bench{{i}}', password='{PASSWORD}'))\n"
            "U.objects.create_superuser('benchstaff', password='" + PASSWORD + "')\n"
        )
        top.manage("shell", "-c", create + setup, stdout=subprocess.DEVNULL)
        procs = []
        for _ in range(processes):
            port = free_port()
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
                 "voiceproject.asgi:application"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
            top.bases.append(f"http://127.0.0.1:{port}")
        if worker:
            procs.append(subprocess.Popen([sys.executable, "manage.py", "sideband_worker", "--poll", "0.2"],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
        try:
            for base, proc in zip(top.bases, procs):
                wait_for(f"{base}/healthz", proc)
            yield top
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


@contextlib.contextmanager
def service(simulator_url, users, extra_env=None, setup=""):
    """One daphne on a fresh SQLite database with `users` bench users; yields the base URL."""
    with topology(simulator_url, users, extra_env=extra_env, setup=setup) as top:
        yield top.bases[0]


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
