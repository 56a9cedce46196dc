"""Fixtures: a fresh simulator per test on 127.0.0.1 and an HTTP client."""

from __future__ import annotations

import aiohttp
import pytest

from realtime_sim import start_simulator

API_KEY = "sk-test-key"


@pytest.fixture
async def sim():
    simulator = await start_simulator("127.0.0.1", 0, api_key=API_KEY)
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {API_KEY}"}
