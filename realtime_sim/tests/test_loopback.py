"""The loopback guard: candidates, datagrams and sends stay on 127.0.0.1."""

from __future__ import annotations

import aioice.ice as ice

from realtime_sim.loopback import install_loopback_guard, is_loopback_host, strip_offer_candidates

from .conftest import API_KEY
from .rtc_client import RtcClient

OFFER = "\r\n".join([
    "v=0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "a=candidate:1 1 udp 2122260223 192.168.1.20 50000 typ host generation 0",
    "a=candidate:2 1 udp 2122194687 127.0.0.1 50001 typ host generation 0",
    "a=candidate:3 1 udp 2122129151 3f2a1c9e-aaaa-bbbb-cccc-123456789abc.local 50002 typ host",
    "a=candidate:4 1 udp 1685987071 203.0.113.7 50003 typ srflx raddr 10.0.0.2 rport 50000",
    "a=end-of-candidates",
    "",
])


def test_offer_candidates_are_stripped_to_loopback():
    stripped = strip_offer_candidates(OFFER)
    candidates = [line for line in stripped.split("\r\n") if line.startswith("a=candidate:")]
    assert candidates == ["a=candidate:2 1 udp 2122194687 127.0.0.1 50001 typ host generation 0"]
    assert stripped.endswith("a=end-of-candidates\r\n")
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert not is_loopback_host("10.0.0.2") and not is_loopback_host("host.local")


async def test_datagrams_and_sends_off_loopback_are_dropped():
    install_loopback_guard()
    assert ice.get_host_addresses(True, True) == ["127.0.0.1"]

    class Receiver:
        def __init__(self):
            self.data = []

        def data_received(self, data, component):
            self.data.append(data)

    class Transport:
        def __init__(self):
            self.sent = []

        def sendto(self, data, addr):
            self.sent.append(addr)

    receiver = Receiver()
    protocol = ice.StunProtocol(receiver)
    protocol.transport = Transport()
    protocol.local_candidate = ice.Candidate("f", 1, "udp", 1, "127.0.0.1", 1, "host")
    protocol.datagram_received(b"\x80media", ("172.17.0.2", 4000))
    protocol.datagram_received(b"\x80media", ("127.0.0.1", 4000))
    assert receiver.data == [b"\x80media"]
    message = ice.stun.Message(ice.stun.Method.BINDING, ice.stun.Class.REQUEST)
    protocol.send_stun(message, ("8.8.8.8", 3478))
    protocol.send_stun(message, ("127.0.0.1", 3478))
    assert protocol.transport.sent == [("127.0.0.1", 3478)]


async def test_both_sides_offer_only_loopback_candidates(sim):
    client = RtcClient()
    try:
        await client.connect(sim.base_url, API_KEY)
        for sdp in (client.pc.localDescription.sdp, client.pc.remoteDescription.sdp):
            hosts = [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]
            assert hosts and all(host == "127.0.0.1" for host in hosts)
    finally:
        await client.close()
