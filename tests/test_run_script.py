"""`make run`'s script (scripts/run.sh) as a person runs it: on a fresh folder it migrates, seeds the
demo once, starts the simulator and the server, and Ctrl-C stops everything it started."""

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bench.harness import REDIS_BASE_URL, REDIS_DB, _flush_redis, signed_in_client
from tests.browser.conftest import free_port, wait_for_http

ROOT = Path(__file__).resolve().parent.parent


def children(pid):
    """The command lines of every process below `pid`."""
    found = []
    for line in subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines():
        child, parent, args = line.split(None, 2)
        found.append((int(child), int(parent), args))
    below, frontier = [], {pid}
    while frontier:
        level = [(c, args) for c, p, args in found if p in frontier]
        below += [args for _, args in level]
        frontier = {c for c, _ in level}
    return below


def health(base):
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        return json.loads(response.read())


def run_script(var_dir, extra_env=None):
    """scripts/run.sh in a session of its own (as a terminal's process group), the way `make run` runs it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "REDIS_URL", "DATABASE_URL", "SIDEBAND_WORKER", "DJANGO_SETTINGS_MODULE")}
    port = free_port()
    env.update(VAR_DIR=str(var_dir), PORT=str(port), SIMULATOR_PORT=str(free_port()), **(extra_env or {}))
    proc = subprocess.Popen(["scripts/run.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def interrupt(proc):
    """Ctrl-C: SIGINT to the whole process group; everything it started must end."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return output
        assert time.monotonic() < deadline, "a process make run started outlived Ctrl-C"
        time.sleep(0.1)


def eventually(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


@pytest.mark.parametrize("mode", ["inprocess", pytest.param("external", marks=pytest.mark.scaleout)])
def test_make_run_starts_one_sideband_worker_and_stops_everything_on_ctrl_c(tmp_path, mode):
    extra = {"REDIS_URL": f"{REDIS_BASE_URL}/{REDIS_DB}"} if mode == "external" else {}
    if extra:
        _flush_redis()
    proc, base = run_script(tmp_path, extra)
    try:
        wait_for_http(f"{base}/healthz", timeout=60, proc=proc)
        # One sideband worker, where the settings say: inside the server on one machine (so its pages
        # hear of verified usage through the in-memory layer), a process of its own with Redis.
        status = eventually(lambda: (h := health(base))["sideband_workers"] and h)
        assert status["status"] == "ok" and status["sideband_worker_mode"] == mode, status
        assert status["sideband_workers"] == 1, status
        running = children(proc.pid)
        assert len([a for a in running if "realtime_sim" in a]) == 1, running
        assert len([a for a in running if "uvicorn" in a]) == 1, running
        assert len([a for a in running if "sideband_worker" in a]) == (mode == "external"), running
    finally:
        output = interrupt(proc)
        if extra:
            _flush_redis()
    password = re.search(r"password for all: (\S+)\)", output).group(1)
    assert (tmp_path / "db.sqlite3").exists() and (tmp_path / "demo-seeded").exists()

    # Run again on the same folder: the demo is kept (same passwords), nothing is printed about it.
    proc, base = run_script(tmp_path, extra)
    try:
        wait_for_http(f"{base}/healthz", timeout=60, proc=proc)

        async def signed_in():
            client = await signed_in_client(base, "alice", password=password)
            try:
                return (await client.get("/api/budget")).status_code
            finally:
                await client.aclose()

        assert asyncio.run(signed_in()) == 200
    finally:
        output = interrupt(proc)
        if extra:
            _flush_redis()
    assert "Demo logins" not in output
