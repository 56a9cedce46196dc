"""Ways to run the simulator: SimulatorThread, the CLI, and its loopback-only rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from realtime_sim import SimulatorThread, start_simulator

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def test_simulator_thread_serves_sync_callers():
    runner = SimulatorThread(api_key="sk-thread")
    base_url = runner.start()
    try:
        assert base_url.startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            f"{base_url}/v1/realtime/client_secrets", data=b'{"session": {"type": "realtime"}}',
            headers={"Authorization": "Bearer sk-thread", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.load(resp)["value"].startswith("ek_")
        assert _get(f"{base_url}/_sim/state")["client_secret_requests"] == 1
        assert runner.state.client_secret_requests == 1

        async def count_secrets():
            return len(runner.state.secrets)

        assert runner.run(count_secrets()) == 1
    finally:
        runner.stop()
    assert not runner._thread.is_alive()


async def test_only_loopback_addresses_can_be_bound():
    with pytest.raises(ValueError):
        await start_simulator("0.0.0.0", 0)


def test_cli_prints_its_address_and_uses_the_env_key():
    env = {**os.environ, "SIM_API_KEY": "sk-from-env", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "realtime_sim", "--host", "127.0.0.1", "--port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("realtime simulator listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[-1]
        request = urllib.request.Request(
            f"{base_url}/v1/realtime/client_secrets", data=b"{}",
            headers={"Authorization": "Bearer sk-from-env", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
