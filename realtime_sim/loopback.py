"""Keep every WebRTC packet on the loopback interface.

Per the measured recipe (shared/WEBRTC_TESTING.md): aioice must offer only a
127.0.0.1 host candidate, drop datagrams from non-loopback sources, refuse to
send anywhere else, never use STUN/TURN, and never resolve mDNS names. The
guard patches aioice once per process; it only ever removes possibilities,
so it is harmless to other aiortc users in the same process (test peers).
"""

from __future__ import annotations

import ipaddress
import logging
import threading

import aioice.ice as ice

log = logging.getLogger(__name__)
_lock = threading.Lock()
_installed = False


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # hostnames, including mDNS "*.local", are never trusted


def strip_offer_candidates(sdp: str) -> str:
    """Drop candidates that are not loopback IP literals (incl. .local mDNS names)."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    kept = []
    for line in sdp.split(newline):
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) < 6 or not is_loopback_host(parts[4]):
                continue
        kept.append(line)
    return newline.join(kept)


def install_loopback_guard() -> None:
    """Patch aioice (idempotent) so ICE stays on 127.0.0.1."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True

        def loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return ["127.0.0.1"] if use_ipv4 else []

        ice.get_host_addresses = loopback_host_addresses

        original_gather = ice.Connection.gather_candidates

        async def gather_without_servers(self):
            # Belt and braces: even a misconfigured peer never asks STUN/TURN.
            self.stun_server = None
            self.turn_server = None
            return await original_gather(self)

        ice.Connection.gather_candidates = gather_without_servers

        original_add_remote = ice.Connection.add_remote_candidate

        async def add_loopback_remote(self, remote_candidate):
            if remote_candidate is not None and not is_loopback_host(remote_candidate.host):
                log.debug("ignoring non-loopback remote candidate %s", remote_candidate.host)
                return
            return await original_add_remote(self, remote_candidate)

        ice.Connection.add_remote_candidate = add_loopback_remote

        original_received = ice.StunProtocol.datagram_received

        def received_from_loopback_only(self, data, addr):
            if not is_loopback_host(str(addr[0])):
                return  # e.g. Chromium's checks sourced from its eth0 address
            return original_received(self, data, addr)

        ice.StunProtocol.datagram_received = received_from_loopback_only

        original_send_stun = ice.StunProtocol.send_stun

        def send_stun_loopback(self, message, addr):
            if not is_loopback_host(str(addr[0])):
                log.debug("refusing STUN to non-loopback %s", addr)
                return
            return original_send_stun(self, message, addr)

        ice.StunProtocol.send_stun = send_stun_loopback

        original_send_data = ice.StunProtocol.send_data

        async def send_data_loopback(self, data, addr):
            if not is_loopback_host(str(addr[0])):
                log.debug("refusing data to non-loopback %s", addr)
                return
            return await original_send_data(self, data, addr)

        ice.StunProtocol.send_data = send_data_loopback
