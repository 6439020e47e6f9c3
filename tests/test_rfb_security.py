"""rfb.py's security step: VeNCrypt's messages (the server's side) and VNC Authentication's DES.

The wire bytes are written by hand from RFC 6143 §7.2.2 and the rfbproto VeNCrypt section.
VeNCrypt's pieces from the viewer are fixed-size (a 2-byte version, a 4-byte subtype), read
whole by the handshake, so each parser is checked on exactly those bytes and on bad values.
"""

import struct

import pytest

import rfb

X509_NONE, X509_VNC = 260, 261


def test_security_type_and_subtype_numbers():
    assert rfb.SecurityType.VENCRYPT == 19
    assert (rfb.VeNCryptSubtype.X509_NONE, rfb.VeNCryptSubtype.X509_VNC) == (X509_NONE, X509_VNC)


def test_vencrypt_version():
    assert rfb.VENCRYPT_VERSION == b"\x00\x02"
    assert rfb.vencrypt_version_ack(b"\x00\x02") == b"\x00"
    assert rfb.vencrypt_version_ack(b"\x00\x01") == b"\x01"
    assert rfb.vencrypt_version_ack(b"\x01\x02") == b"\x01"


def test_vencrypt_subtypes():
    assert rfb.vencrypt_subtypes([X509_VNC]) == b"\x01\x00\x00\x01\x05"
    assert rfb.vencrypt_subtypes([X509_NONE, X509_VNC]) == b"\x02\x00\x00\x01\x04\x00\x00\x01\x05"


def test_vencrypt_choice():
    assert rfb.parse_vencrypt_choice(b"\x00\x00\x01\x05", [X509_VNC]) == X509_VNC
    with pytest.raises(rfb.ProtocolError, match="subtype 260"):
        rfb.parse_vencrypt_choice(struct.pack(">I", X509_NONE), [X509_VNC])
    with pytest.raises(rfb.ProtocolError, match="not offered"):
        rfb.parse_vencrypt_choice(b"\xff\xff\xff\xff", [X509_VNC])


def test_vnc_auth_response_is_des_with_bit_reversed_key():
    from Crypto.Cipher import DES

    challenge = bytes(range(16))
    # "secret12" and beyond: only 8 bytes count, each bit-reversed (s=0x73 -> 0xCE, ...).
    key = bytes(int(f"{byte:08b}"[::-1], 2) for byte in b"secret12")
    expected = DES.new(key, DES.MODE_ECB).encrypt(challenge)
    assert rfb.vnc_auth_response(challenge, b"secret12") == expected
    assert rfb.vnc_auth_response(challenge, b"secret12-and-more") == expected
    assert len(expected) == rfb.CHALLENGE_LENGTH
