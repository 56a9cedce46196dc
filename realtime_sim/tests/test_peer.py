"""The simulator's peer connections: the certificate they share, and what they leave alone."""

from __future__ import annotations

import datetime

import aiortc.rtcpeerconnection
from aiortc import RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from realtime_sim.peer import SimulatorCertificate, peer_connection


def _certificate(pc):
    return pc._RTCPeerConnection__certificates[0]


def _lapsing_certificate(hours):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "lapsing")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=hours)).sign(key, hashes.SHA256()))
    return SimulatorCertificate(key, cert)


async def test_peers_share_one_certificate_and_other_peer_connections_keep_their_own():
    first, second = peer_connection(), peer_connection()
    try:
        assert _certificate(first) is _certificate(second)
        assert isinstance(_certificate(first), SimulatorCertificate)
        assert aiortc.rtcpeerconnection.RTCCertificate is RTCCertificate
        other = aiortc.RTCPeerConnection()
        assert type(_certificate(other)) is RTCCertificate
        await other.close()
    finally:
        await first.close()
        await second.close()


def test_the_fingerprints_are_worked_out_once_and_match_aiortcs():
    certificate = SimulatorCertificate.generateCertificate()
    computed = RTCCertificate.getFingerprints(certificate)
    assert certificate.getFingerprints() == computed
    certificate.getFingerprints().clear()  # a caller's list is its own
    assert certificate.getFingerprints() == computed


def test_a_certificate_about_to_lapse_is_renewed(monkeypatch):
    lapsing = _lapsing_certificate(hours=20)
    monkeypatch.setattr(SimulatorCertificate, "_current", lapsing)
    renewed = SimulatorCertificate.generateCertificate()
    assert renewed is not lapsing
    assert renewed.expires > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20)
    assert SimulatorCertificate.generateCertificate() is renewed
    lasting = _lapsing_certificate(hours=48)
    monkeypatch.setattr(SimulatorCertificate, "_current", lasting)
    assert SimulatorCertificate.generateCertificate() is lasting

