"""/ws/dashboard/: who may listen, and what each listener hears."""

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from sessions_app.consumers import DASHBOARD_GROUP
from tests.test_usage_consumer import cookie_for, make_app

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


async def listen(user, origin="http://127.0.0.1:8000"):
    headers = [(b"origin", origin.encode())]
    if user is not None:
        headers.append((b"cookie", (await cookie_for(user)).encode()))
    comm = WebsocketCommunicator(make_app(), "/ws/dashboard/", headers=headers)
    connected, _ = await comm.connect()
    return comm, connected


def update(team):
    return {"type": "spend.batch", "updates": [
        {"type": "spend.update", "session_id": "s1", "team_id": str(team.pk), "response_id": "r1",
         "cost_usd": "0.001000", "session": {}}]}


async def test_staff_hears_every_team(staff, team_a, team_b):
    comm, connected = await listen(staff)
    assert connected
    for team in (team_a, team_b):
        await get_channel_layer().group_send(DASHBOARD_GROUP, update(team))
        message = await comm.receive_json_from()
        assert message["type"] == "spend.update" and "team_id" not in message
    await comm.disconnect()


async def test_team_admin_hears_only_their_team(alice, team_a, team_b):
    comm, connected = await listen(alice)
    assert connected
    await get_channel_layer().group_send(DASHBOARD_GROUP, update(team_b))
    assert await comm.receive_nothing(timeout=0.2)
    await get_channel_layer().group_send(DASHBOARD_GROUP, update(team_a))
    assert (await comm.receive_json_from())["cost_usd"] == "0.001000"
    await comm.disconnect()


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
