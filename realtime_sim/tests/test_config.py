"""Runtime settings: /_sim/config, /_sim/reset, start_simulator/SimulatorThread and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from realtime_sim import SimulatorThread, start_simulator

from .conftest import API_KEY

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {
    "call_max_seconds": 3600,
    "sideband_auth": "any",
    "hangup_auth": "api_key_only",
    "transcription_delay_ms": 0,
    "playback_after_done": False,
    "truncate_transcript": "heard",
    "datachannel_max_message_bytes": 65536,
}


async def test_config_get_post_and_reset(sim, http):
    url = f"{sim.base_url}/_sim/config"
    assert await (await http.get(url)).json() == DEFAULTS
    resp = await http.post(url, json={"call_max_seconds": 2, "sideband_auth": "api_key_only",
                                      "playback_after_done": True})
    assert resp.status == 200
    expected = {**DEFAULTS, "call_max_seconds": 2, "sideband_auth": "api_key_only", "playback_after_done": True}
    assert await resp.json() == expected
    assert await (await http.get(url)).json() == expected
    state = await (await http.get(f"{sim.base_url}/_sim/state")).json()
    assert state["config"] == expected
    assert (await http.post(url, json={"call_max_seconds": 0.5})).status == 200  # fractions are fine

    reset = await http.post(f"{sim.base_url}/_sim/reset")
    assert reset.status == 200
    assert await (await http.get(url)).json() == DEFAULTS


@pytest.mark.parametrize("body,param,code", [
    ({"call_max_minutes": 5}, "call_max_minutes", "unknown_parameter"),
    ({"call_max_seconds": 5, "bogus": 1}, "bogus", "unknown_parameter"),
    ({"call_max_seconds": "20"}, "call_max_seconds", "invalid_type"),
    ({"call_max_seconds": True}, "call_max_seconds", "invalid_type"),
    ({"call_max_seconds": 0}, "call_max_seconds", "invalid_value"),
    ({"sideband_auth": "both"}, "sideband_auth", "invalid_value"),
    ({"sideband_auth": 1}, "sideband_auth", "invalid_type"),
    ({"hangup_auth": "both"}, "hangup_auth", "invalid_value"),
    ({"hangup_auth": None}, "hangup_auth", "invalid_type"),
    ({"truncate_transcript": "some"}, "truncate_transcript", "invalid_value"),
    ({"truncate_transcript": False}, "truncate_transcript", "invalid_type"),
    ({"transcription_delay_ms": 1.5}, "transcription_delay_ms", "invalid_type"),
    ({"transcription_delay_ms": -1}, "transcription_delay_ms", "invalid_value"),
    ({"playback_after_done": "yes"}, "playback_after_done", "invalid_type"),
    ({"playback_after_done": 1}, "playback_after_done", "invalid_type"),
    ({"datachannel_max_message_bytes": None}, "datachannel_max_message_bytes", "invalid_type"),
    ({"datachannel_max_message_bytes": 0}, "datachannel_max_message_bytes", "invalid_value"),
    (["call_max_seconds", 5], None, "invalid_type"),
])
async def test_config_refuses_unknown_keys_and_wrong_types(sim, http, body, param, code):
    url = f"{sim.base_url}/_sim/config"
    resp = await http.post(url, json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    assert await (await http.get(url)).json() == DEFAULTS  # all or nothing


async def test_config_refuses_a_body_that_is_not_json(sim, http):
    resp = await http.post(f"{sim.base_url}/_sim/config", data="{nope",
                           headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"


async def test_start_simulator_config_is_what_reset_restores(http):
    sim = await start_simulator("127.0.0.1", 0, api_key=API_KEY,
                                config={"call_max_seconds": 30, "transcription_delay_ms": 250})
    try:
        url = f"{sim.base_url}/_sim/config"
        started = {**DEFAULTS, "call_max_seconds": 30, "transcription_delay_ms": 250}
        assert await (await http.get(url)).json() == started
        await http.post(url, json={"call_max_seconds": 2})
        await http.post(f"{sim.base_url}/_sim/reset")
        assert await (await http.get(url)).json() == started
    finally:
        await sim.stop()
    with pytest.raises(ValueError, match="sideband_auth"):
        await start_simulator("127.0.0.1", 0, config={"sideband_auth": "nobody"})
    with pytest.raises(ValueError, match="unknown"):
        await start_simulator("127.0.0.1", 0, config={"unknown": 1})


def test_simulator_thread_takes_a_config():
    runner = SimulatorThread(api_key="sk-thread", config={"sideband_auth": "call_secret_only"})
    base_url = runner.start()
    try:
        with urllib.request.urlopen(f"{base_url}/_sim/config", timeout=5) as resp:
            assert json.load(resp)["sideband_auth"] == "call_secret_only"
        assert runner.state.config.sideband_auth == "call_secret_only"
    finally:
        runner.stop()


def test_cli_flags_set_the_startup_config():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime_sim", "--port", "0", "--call-max-seconds", "20",
         "--sideband-auth", "api_key_only", "--hangup-auth", "call_secret_only", "--transcription-delay-ms", "700", "--playback-after-done",
         "--truncate-transcript", "removed",
         "--datachannel-max-message-bytes", "16384"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("realtime simulator listening on http://127.0.0.1:"), line
        base_url = line.rsplit(" ", 1)[-1]
        with urllib.request.urlopen(f"{base_url}/_sim/config", timeout=5) as resp:
            assert json.load(resp) == {"call_max_seconds": 20, "sideband_auth": "api_key_only",
                                       "hangup_auth": "call_secret_only",
                                       "transcription_delay_ms": 700, "playback_after_done": True,
                                       "truncate_transcript": "removed", "datachannel_max_message_bytes": 16384}
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    bad = subprocess.run([sys.executable, "-m", "realtime_sim", "--port", "0", "--call-max-seconds", "-5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "call_max_seconds" in bad.stderr
