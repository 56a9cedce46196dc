"""/ws/dashboard/: who may listen, and what each listener hears."""

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from sessions_app.consumers import SpendBatcher, dashboard_groups
from tests.test_usage_consumer import cookie_for, make_app

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def listen(user, origin="http://127.0.0.1:8000"):
    headers = [(b"origin", origin.encode())]
    if user is not None:
        headers.append((b"cookie", (await cookie_for(user)).encode()))
    comm = WebsocketCommunicator(make_app(), "/ws/dashboard/", headers=headers)
    connected, _ = await comm.connect()
    return comm, connected


def update(team, response_id="r1"):
    return {"session_id": "s1", "team_id": str(team.pk), "response_id": response_id, "changes": []}


async def announce(team, response_id="r1"):
    """The way usage.record's updates leave a process: batched into the team's groups."""
    batcher = SpendBatcher.of(get_channel_layer())
    batcher.add(update(team, response_id))
    await batcher.flushing


async def test_staff_hears_every_team(staff, team_a, team_b):
    comm, connected = await listen(staff)
    assert connected
    for team in (team_a, team_b):
        await announce(team)
        message = await comm.receive_json_from()
        assert message["type"] == "spend.update" and message["team_id"] == str(team.pk)
    assert await comm.receive_nothing(timeout=0.2)  # once each, though each went to two groups
    await comm.disconnect()


async def test_team_admin_hears_only_their_team(alice, team_a, team_b):
    comm, connected = await listen(alice)
    assert connected
    await announce(team_b, "rb")
    assert await comm.receive_nothing(timeout=0.2)
    await announce(team_a, "ra")
    assert (await comm.receive_json_from())["response_id"] == "ra"
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


def test_groups_follow_the_team():
    assert dashboard_groups(None) == ["dashboard-all"]
    assert dashboard_groups("t1") == ["dashboard-all", "dashboard-team-t1"]


async def test_members_and_anonymous_are_refused(bob, erin):
    for user in (bob, erin, None):
        comm, connected = await listen(user)
        assert not connected


async def test_foreign_origin_is_refused(staff):
    comm, connected = await listen(staff, origin="http://evil.example")
    assert not connected


async def test_the_socket_only_sends(staff):
    comm, _ = await listen(staff)
    await comm.send_to(text_data="hello")
    assert (await comm.receive_json_from())["code"] == "read_only"
    await comm.disconnect()


async def test_updates_added_while_a_batch_is_being_sent_go_in_the_next(monkeypatch):
    """A slow send (Redis under load) must not strand what arrives meanwhile until some later report."""
    import asyncio

    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    sent, release = [], asyncio.Event()

    async def slow_group_send(group, message):
        if not sent:
            await release.wait()
        sent.append([u["response_id"] for u in message["updates"]])

    monkeypatch.setattr(layer, "group_send", slow_group_send)
    batcher = SpendBatcher.of(layer)
    batcher.add({"response_id": "first", "team_id": None})
    await asyncio.sleep(0.05)  # the first batch is now being sent
    batcher.add({"response_id": "second", "team_id": None})
    release.set()
    await asyncio.wait_for(batcher.flushing, 2)
    assert sent == [["first"], ["second"]]


async def test_a_lone_update_goes_at_once_and_a_burst_goes_together(monkeypatch):
    """Idle, an update is not held back (the dashboard sees it within a loop turn); what arrives
    right after waits at most GAP_SECONDS and leaves in one message."""
    import asyncio

    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer()
    loop = asyncio.get_running_loop()
    sent = []

    async def group_send(group, message):
        sent.append((loop.time(), [u["response_id"] for u in message["updates"]]))

    monkeypatch.setattr(layer, "group_send", group_send)
    batcher = SpendBatcher.of(layer)
    batcher.add({"response_id": "lone", "team_id": None})
    await asyncio.sleep(0)
    assert [ids for _, ids in sent] == [["lone"]]
    for n in range(5):
        batcher.add({"response_id": f"burst{n}", "team_id": None})
    await asyncio.wait_for(batcher.flushing, 2)
    assert [ids for _, ids in sent] == [["lone"], [f"burst{n}" for n in range(5)]]
    assert sent[1][0] - sent[0][0] >= SpendBatcher.GAP_SECONDS * 0.9


async def test_after_a_channel_layer_outage_the_socket_rejoins_and_the_page_reads_again(staff, team_a):
    """Updates sent while Redis was away never reached the socket: when the layer is back the
    consumer joins its groups again and tells the page to read the figures once more."""
    layer = get_channel_layer()
    before = set(layer.groups.get("dashboard-all", ()))  # earlier tests' listeners may still be there
    comm, connected = await listen(staff)
    assert connected
    (channel,) = set(layer.groups["dashboard-all"]) - before
    layer.groups.clear()  # a restarted Redis has forgotten every group
    await layer.send(channel, {"type": "layer.reconnected"})
    assert await comm.receive_json_from() == {"type": "dashboard.resync"}
    await announce(team_a, "after")
    assert (await comm.receive_json_from())["response_id"] == "after"
    await comm.disconnect()


async def test_a_listener_who_may_no_longer_hear_a_team_is_let_go(alice, staff, team_a, settings):
    """A team admin demoted (or removed) and staff no longer staff kept hearing the spend on the socket they
    had open; now it is closed within the recheck, and a new socket is refused."""
    from channels.db import database_sync_to_async

    from teams_app.models import Membership

    settings.DASHBOARD_RECHECK_SECONDS = 0.1
    admin_socket, _ = await listen(alice)
    staff_socket, _ = await listen(staff)
    await announce(team_a, "before")
    for comm in (admin_socket, staff_socket):
        assert (await comm.receive_json_from())["response_id"] == "before"
    assert await admin_socket.receive_nothing(timeout=0.3)  # still allowed: the socket stays

    await Membership.objects.filter(user=alice).aupdate(role=Membership.MEMBER)
    await database_sync_to_async(type(staff).objects.filter(pk=staff.pk).update)(is_staff=False)
    for comm in (admin_socket, staff_socket):
        closed = await comm.receive_output(timeout=2)
        assert closed == {"type": "websocket.close", "code": 4403}
    await announce(team_a, "after")
    _, connected = await listen(alice)
    assert not connected
