"""The channel layer on the machine's Redis: a socket that goes away takes no other socket's messages.

All of a process's sockets receive through one Redis list. In channels-redis the consumer that happens
to be waiting pops for all of them, and a consumer cancelled between its pop and handing the message on
(its socket closing just then) dropped a message meant for another socket: the ingest benchmark's
dashboard missed about one spend update a run that way, always one sent as a usage socket closed. The
window is one Redis reply; here it is widened so that every cancellation lands in it.
"""

import asyncio
import uuid

import pytest
import redis

from bench.harness import REDIS_BASE_URL
from voiceproject.channel_layer import BoundedRedisChannelLayer

pytestmark = pytest.mark.scaleout

URL = f"{REDIS_BASE_URL}/12"


@pytest.fixture
def layer():
    prefix = f"layertest-{uuid.uuid4().hex[:8]}"
    yield BoundedRedisChannelLayer(hosts=[{"address": URL}], prefix=prefix)
    client = redis.Redis.from_url(URL, socket_timeout=5)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


def widen_the_pop(layer, monkeypatch, seconds=0.05):
    """The reply of each pop takes `seconds` to reach the caller, as it can on a loaded machine."""
    pop = layer.receive_single

    async def slow_pop(channel):
        popped = await pop(channel)
        await asyncio.sleep(seconds)
        return popped

    monkeypatch.setattr(layer, "receive_single", slow_pop)


async def test_a_receive_cancelled_while_a_pop_is_under_way_loses_no_other_channels_message(layer, monkeypatch):
    widen_the_pop(layer, monkeypatch)
    dashboard = await layer.new_channel()
    for n in range(5):
        closing = await layer.new_channel()
        leaving = asyncio.ensure_future(layer.receive(closing))  # a socket waiting for its next message
        await asyncio.sleep(0.02)
        waiting = asyncio.ensure_future(layer.receive(dashboard))
        await layer.send(dashboard, {"type": "spend.batch", "n": n})
        await asyncio.sleep(0.01)  # the message is popped; its reply is on the way
        leaving.cancel()  # the socket closes
        message = await asyncio.wait_for(waiting, 5)
        assert message == {"type": "spend.batch", "n": n}
        with pytest.raises(asyncio.CancelledError):
            await leaving


async def test_messages_reach_each_channel_in_order_and_a_cancelled_wait_keeps_what_comes_after(layer):
    a, b = await layer.new_channel(), await layer.new_channel()
    for n in range(3):
        await layer.send(a, {"type": "x", "n": n})
        await layer.send(b, {"type": "y", "n": n})
    assert [(await layer.receive(a))["n"] for _ in range(3)] == [0, 1, 2]
    timed_out = asyncio.ensure_future(layer.receive(b))
    await asyncio.sleep(0)
    # b's first message is already here: a wait cancelled after that must leave the rest queued.
    first = await timed_out
    assert first["n"] == 0
    stalled = asyncio.ensure_future(layer.receive(a))
    await asyncio.sleep(0.05)
    stalled.cancel()  # nothing for a: its wait ends (as the sideband's timed wait does)
    with pytest.raises(asyncio.CancelledError):
        await stalled
    assert [(await layer.receive(b))["n"] for _ in range(2)] == [1, 2]
    await layer.send(a, {"type": "x", "n": 3})
    assert (await asyncio.wait_for(layer.receive(a), 5))["n"] == 3


async def test_a_closed_sockets_late_messages_are_dropped_not_kept(layer, monkeypatch):
    """Messages still on their way to a socket that has closed (it left its groups, not yet the
    in-flight ones) are not kept for it forever."""
    monkeypatch.setattr(layer, "FORGET_AFTER_SECONDS", 0.05)
    gone, alive = await layer.new_channel(), await layer.new_channel()
    waiting = asyncio.ensure_future(layer.receive(gone))
    await asyncio.sleep(0.02)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.1)
    await layer.send(gone, {"type": "late"})
    await layer.send(alive, {"type": "x"})
    assert await asyncio.wait_for(layer.receive(alive), 5) == {"type": "x"}
    assert gone not in layer.receive_buffer


async def test_a_notice_reaches_every_subscriber_of_its_topic_and_no_one_else(layer):
    """The sideband workers' wake-ups: one PUBLISH, heard by each worker subscribed at that moment."""
    async with layer.subscribe("wake") as first, layer.subscribe("wake") as second, layer.subscribe("other") as other:
        await layer.publish("wake", {"calls": [1, 2]})
        await layer.publish("wake", {"calls": [3]})
        for get in (first, second):
            assert await asyncio.wait_for(get(), 5) == {"calls": [1, 2]}
            assert await asyncio.wait_for(get(), 5) == {"calls": [3]}
        late = asyncio.ensure_future(other())
        await asyncio.sleep(0.2)
        assert not late.done()  # nothing was published on its topic
        late.cancel()
    # Nobody subscribed: the notice is kept for no one, and publishing it is no error.
    await layer.publish("wake", {"calls": [4]})
    client = redis.Redis.from_url(URL, socket_timeout=5)
    assert not list(client.scan_iter(f"{layer.prefix}*notice*"))


async def test_a_subscriber_waits_past_the_connections_socket_timeout(monkeypatch):
    """A quiet topic outlives the Redis connection's read timeout (the layer's is 30 s; 1 s here)."""
    quick = BoundedRedisChannelLayer(hosts=[{"address": URL, "socket_timeout": 1}], prefix=f"layertest-{uuid.uuid4().hex[:8]}")
    async with quick.subscribe("wake") as get:
        waiting = asyncio.ensure_future(get())
        await asyncio.sleep(2.5)
        assert not waiting.done()
        await quick.publish("wake", {"calls": [7]})
        assert await asyncio.wait_for(waiting, 5) == {"calls": [7]}
    await quick.close_pools()
