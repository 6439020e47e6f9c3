"""auth.py and the viewer handshake around it: passwords, VeNCrypt TLS, the limits on strangers.

The policy pieces (offers, turns, caps, option checks) are tested as data.  Everything else
runs against a real server on loopback (harness.py's Harness) with `SecureClient`, rawviewer's
client taught the security step: VNC authentication with its own DES key schedule and
VeNCrypt with the standard library's TLS, so it shares no code with auth.py.  Certificates are
made for the session by conftest.py with the openssl command (a CA, a server certificate for
127.0.0.1 and localhost, and a second CA that signed nothing of ours).  The command line is
tested as a subprocess, judged only by its exit status, its output and what a viewer then meets.
"""

import ipaddress
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest

import auth
import peers
import viewer
import vncproxy
import vncterm
from harness import Harness, open_fds, server_image, server_tls, settle
from peers import wait_until
from rawviewer import (
    RAW,
    VENCRYPT,
    X509_NONE,
    X509_VNC,
    SecureClient,
    client_tls,
    vnc_response,
)

PASSWORD, VIEW_ONLY_PASSWORD = b"s3cret!x", b"look0nly"


# --- The server ---------------------------------------------------------------------------------


@pytest.fixture
def secured():
    """secured(security, **server options) -> Harness whose server uses that auth.Security."""
    threads = set(threading.enumerate())
    fds = open_fds()
    made = []

    def start(security, **options):
        harness = Harness(**options)
        harness.server.security = security
        made.append(harness)
        return harness

    yield start
    for harness in made:
        harness.close()
    assert wait_until(lambda: set(threading.enumerate()) <= threads)
    assert open_fds() <= fds


def first_update(client):
    client.request(incremental=False)
    return client.read_update()


# --- Policy as data ----------------------------------------------------------------------------


V33, V37, V38 = (3, 3), (3, 7), (3, 8)


@pytest.mark.parametrize("password,tls,tls_only,version,types,subtypes", [
    (None, False, False, V38, [1], [X509_NONE]),
    (PASSWORD, False, False, V38, [2], [X509_VNC]),
    (PASSWORD, False, False, V33, [2], [X509_VNC]),
    (None, True, False, V38, [VENCRYPT, 1], [X509_NONE]),
    (PASSWORD, True, False, V37, [VENCRYPT, 2], [X509_VNC]),
    (PASSWORD, True, False, V33, [2], [X509_VNC]),
    (PASSWORD, True, True, V38, [VENCRYPT], [X509_VNC]),
    (None, True, True, V38, [VENCRYPT], [X509_NONE]),
])
def test_offers(password, tls, tls_only, version, types, subtypes):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if tls else None
    security = auth.Security(password, tls=context, tls_only=tls_only)
    assert security.types(version) == types
    assert security.subtypes == subtypes
    assert 256 not in security.subtypes and 262 not in security.subtypes


def test_tls_only_refuses_rfb_3_3():
    security = auth.Security(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls_only=True)
    assert "TLS" in security.refusal(V33)
    assert security.refusal(V37) is None


def test_responses_are_checked_against_both_passwords():
    challenge = bytes(range(16))
    check = auth.Security(PASSWORD, VIEW_ONLY_PASSWORD).check
    assert check(challenge, vnc_response(challenge, PASSWORD)) is auth.Access.FULL
    assert check(challenge, vnc_response(challenge, VIEW_ONLY_PASSWORD)) is auth.Access.VIEW_ONLY
    assert check(challenge, vnc_response(challenge, b"wrong")) is None
    assert check(challenge, vnc_response(challenge, PASSWORD + b"ignored")) is auth.Access.FULL
    assert auth.Security().check(challenge, vnc_response(challenge, b"")) is None


class Clock:
    """A clock the test moves by hand; as `sleep` it moves itself, so nothing really sleeps."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_checks_take_turns_after_a_burst():
    clock = Clock()
    turns = auth.Turns(interval=1.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [turns.book() for _ in range(5)] == [0, 0, 0, 1, 2]
    clock.now += 2
    assert turns.book() == 1, "the queue ahead is served first"
    clock.now += 100
    assert [turns.book() for _ in range(4)] == [0, 0, 0, 1], "a quiet spell earns the burst"


def test_checks_are_one_a_second_sustained_whatever_the_sources():
    clock = Clock()
    turns = auth.Turns(interval=1.0, burst=3, clock=clock, sleep=clock.sleep)
    started = clock.now
    for _ in range(1000):
        turns.wait()
    assert clock.now - started == 1000 - 3


def test_a_waiting_turn_sleeps_on_the_given_clock():
    clock = Clock()
    turns = auth.Turns(interval=1.0, burst=1, clock=clock, sleep=clock.sleep)
    assert turns.wait() == 0
    assert turns.wait() == 1 and clock.now == 1001


class Evictable:
    """The part of a viewer session that Waiting sees: how to close it."""

    def __init__(self):
        self.evicted = False

    def __call__(self):
        self.evicted = True


def test_a_full_cap_evicts_its_oldest_silent_place_past_the_grace():
    clock = Clock()
    waiting = auth.Waiting(limit=3, per_address=2, grace=1.0, clock=clock)
    first, second, third = Evictable(), Evictable(), Evictable()
    with waiting.admit("a", first), waiting.admit("a", second) as talking:
        waiting.talked(talking)
        with waiting.admit("a", third) as place:
            assert place.refusal and not first.evicted, "the silent one is still in its grace"
        clock.now += 1
        with waiting.admit("a", third) as place:
            assert place.refusal is None and first.evicted and not second.evicted
            with waiting.admit("a", Evictable()) as place:
                assert place.refusal, "the third is in its grace and the second talks"
    assert waiting._places == [] and waiting._refusing == 0


def test_a_newcomer_that_talks_evicts_any_silent_place():
    clock = Clock()
    waiting = auth.Waiting(limit=3, per_address=2, grace=1.0, clock=clock)
    silent = Evictable()
    with waiting.admit("a", silent), waiting.admit("a", Evictable()) as talking:
        waiting.talked(talking)
        with waiting.admit("a", Evictable()) as place:
            assert place.refusal
            waiting.talked(place)
            assert place.refusal is None and silent.evicted
            assert waiting._places == [talking, place] and waiting._refusing == 0
    assert waiting._places == [] and waiting._refusing == 0


def test_a_full_global_cap_evicts_across_addresses():
    clock = Clock()
    waiting = auth.Waiting(limit=3, per_address=2, grace=1.0, clock=clock)
    silent = [Evictable() for _ in range(3)]
    with waiting.admit("a", silent[0]), waiting.admit("b", silent[1]), \
            waiting.admit("c", silent[2]):
        clock.now += 1
        with waiting.admit("d", Evictable()) as place:
            assert place.refusal is None
            assert [evict.evicted for evict in silent] == [True, False, False]


def test_a_cap_full_of_talking_places_refuses_with_a_reason():
    waiting = auth.Waiting(limit=3, per_address=2, clock=Clock())
    with waiting.admit("a", Evictable()) as one, waiting.admit("a", Evictable()) as two:
        waiting.talked(one)
        waiting.talked(two)
        with waiting.admit("a", Evictable()) as place:
            waiting.talked(place)
            assert place.refusal == "2 connections from a are already in the handshake"
        with waiting.admit("b", Evictable()) as three:
            waiting.talked(three)
            with waiting.admit("c", Evictable()) as place:
                waiting.talked(place)
                assert place.refusal == "3 connections are already in the handshake"
    assert waiting._places == [] and waiting._refusing == 0


def test_refusals_are_capped_too():
    waiting = auth.Waiting(limit=1, per_address=1, clock=Clock())
    with waiting.admit("a", Evictable()) as talking:
        waiting.talked(talking)
        with waiting.admit("b", Evictable()) as place:
            assert place.refusal
            with pytest.raises(auth.Refused, match="1 connections are already"):
                with waiting.admit("c", Evictable()):
                    pass
    with pytest.raises(RuntimeError):
        with waiting.admit("a", Evictable()):
            raise RuntimeError("the handshake failed")
    assert waiting._places == [] and waiting._refusing == 0


def test_password_files(tmp_path, caplog):
    good = tmp_path / "good"
    good.write_bytes(b"secret\nsecond line\n")
    good.chmod(0o600)
    assert auth.read_password(str(good)) == b"secret"
    assert not caplog.records
    long = tmp_path / "long"
    long.write_bytes(b"averylongpassword\r\n")
    long.chmod(0o644)
    assert auth.read_password(str(long)) == b"averylongpassword"
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "first 8 characters" in warnings and "chmod 600" in warnings
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        auth.read_password(str(empty))


# --- Options, with the server's bound address ----------------------------------------------------


def start_auth(argv, host="127.0.0.1"):
    args = vncterm.parse_args(argv)
    return auth.start(args, (host, 5900))


def write(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_non_loopback_needs_a_password_file_or_insecure(tmp_path):
    with pytest.raises(ValueError, match="--password-file.*--insecure"):
        start_auth(["--command", "true"], host="0.0.0.0")
    assert start_auth(["--command", "true", "--insecure"], host="0.0.0.0").password is None
    password = write(tmp_path / "pw", "secret")
    assert start_auth(["--command", "true", "--password-file", password],
                      host="192.0.2.1").password == b"secret"


def test_browser_relay_on_the_network_counts_as_exposed():
    with pytest.raises(ValueError, match="every address"):
        start_auth(["--command", "true", "--web", "0", "--web-listen", ""])
    assert start_auth(["--command", "true", "--web", "0"]).password is None


def test_one_time_password_only_for_the_users_own_shell(capsys):
    security = start_auth([])
    assert len(security.password) == 8
    assert security.password.decode() in capsys.readouterr().out
    assert start_auth(["--no-auth"]).password is None
    assert start_auth(["--pty", "/dev/null"]).password is None
    assert start_auth(["--command", "true"]).password is None


@pytest.mark.parametrize("argv,error", [
    (["--tls-only"], "--tls-only needs --tls-cert"),
    (["--tls-only", "--tls-cert", "{pw}", "--web", "0"], "lock out the browser console"),
    (["--viewonly-password-file", "{pw}"], "needs --password-file"),
    (["--password-file", "{pw}", "--viewonly-password-file", "{pw}"], "must differ"),
    (["--tls-cert", "/nonexistent.pem"], "cannot load the TLS certificate"),
])
def test_option_mistakes_are_reported(tmp_path, argv, error):
    password = write(tmp_path / "pw", "secret")
    with pytest.raises(ValueError, match=error):
        start_auth(["--command", "true", *(a.format(pw=password) for a in argv)])


def test_no_auth_and_a_password_file_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit):
        vncterm.parse_args(["--no-auth", "--password-file", write(tmp_path / "pw", "x")])


# --- VNC authentication on a real server --------------------------------------------------------


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"])
def test_vnc_authentication(secured, version):
    h = secured(auth.Security(PASSWORD))
    client = SecureClient(h.port, PASSWORD, version=version)
    assert client.types == [2]
    assert first_update(client)[0][4] == RAW
    client.close()


def test_wrong_password_is_refused_slowly_and_logged(secured, caplog):
    h = secured(auth.Security(PASSWORD))
    started = time.monotonic()
    with pytest.raises(PermissionError, match="authentication failed"):
        SecureClient(h.port, b"guess")
    assert time.monotonic() - started >= auth.FAILURE_DELAY
    assert wait_until(lambda: any("127.0.0.1" in r.getMessage() and "VNC authentication failed"
                                in r.getMessage() for r in caplog.records))


def test_password_checks_take_turns_across_addresses(secured, monkeypatch):
    monkeypatch.setattr(auth, "FAILURE_DELAY", 0)
    clock = Clock()
    security = auth.Security(PASSWORD)
    security.turns = auth.Turns(interval=1.0, burst=1, clock=clock, sleep=clock.sleep)
    h = secured(security)
    for n in range(2, 6):
        with pytest.raises(PermissionError):
            guess_from(f"127.0.0.{n}", h.port)
    good = SecureClient(h.port, PASSWORD)
    assert first_update(good)
    good.close()
    assert clock.now == 1000 + 4, "five checks from five addresses took four turns of a second"


def guess_from(host, port):
    """One wrong password from a loopback address of our choosing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(host, 0))
    with sock:
        assert sock.recv(12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        assert sock.recv(2) == b"\x01\x02"
        sock.sendall(b"\x02")
        sock.sendall(vnc_response(peers.recv_exactly(sock, 16, "server"), b"guess"))
        if sock.recv(4) != b"\0\0\0\0":
            raise PermissionError("authentication failed")


def test_view_only_viewer_watches_but_its_input_goes_nowhere(secured):
    h = secured(auth.Security(PASSWORD, VIEW_ONLY_PASSWORD))
    full = SecureClient(h.port, PASSWORD)
    watcher = SecureClient(h.port, VIEW_ONLY_PASSWORD, shared=False)
    watcher.type("rm -rf /")
    watcher.key(0xFF0D)
    watcher.send(struct.pack(">BBHH", 5, 1, 10, 10))
    watcher.send(struct.pack(">B3xI", 6, 5) + b"paste")
    h.guest_writes(b"still shown")
    assert settle(watcher, server_image(h))
    assert h.guest_reads(1, timeout=0.5) == b""
    full.type("ok")
    assert h.guest_reads(2) == b"ok"
    assert first_update(full), "the watcher's exclusive request disconnected nobody"
    full.close()
    watcher.close()


def test_handshake_deadline_covers_a_trickling_viewer(secured):
    """One byte of the version every 0.25 s beats a per-read timeout of 1 s, not the deadline."""
    h = secured(auth.Security(), handshake_timeout=1.0)
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    assert sock.recv(12) == b"RFB 003.008\n"
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for byte in b"RFB 003.008\n":
            time.sleep(0.25)
            sock.sendall(bytes([byte]))
    sock.close()


def test_a_silent_connection_has_a_shorter_deadline(secured, monkeypatch):
    monkeypatch.setattr(auth, "VERSION_TIMEOUT", 0.2)
    h = secured(auth.Security(), handshake_timeout=30)
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    assert sock.recv(12) == b"RFB 003.008\n"
    assert sock.recv(100) == b"", "closed long before the handshake's 30 s"
    sock.close()


@pytest.mark.parametrize("version", [b"RFB 003.003\n", b"RFB 003.008\n"])
def test_unauthenticated_connections_are_capped(secured, version):
    security = auth.Security(PASSWORD)
    security.waiting = auth.Waiting(limit=3, per_address=2)
    h = secured(security)
    talking = [socket.create_connection(("127.0.0.1", h.port), timeout=5) for _ in range(2)]
    for sock in talking:
        assert sock.recv(12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        assert sock.recv(2) == b"\x01\x02"
    with pytest.raises(ConnectionRefusedError, match="2 connections from 127.0.0.1"):
        SecureClient(h.port, PASSWORD, version=version)
    for sock in talking:
        sock.close()
    assert wait_until(lambda: not security.waiting._places)
    good = SecureClient(h.port, PASSWORD)
    assert first_update(good)
    good.close()


# --- VeNCrypt -----------------------------------------------------------------------------------


def test_x509_none_carries_the_whole_session(secured, certificates):
    h = secured(auth.Security(tls=server_tls(certificates), tls_only=True))
    client = SecureClient(h.port, tls=client_tls(certificates["ca"]))
    assert client.types == [VENCRYPT] and client.subtypes == [X509_NONE]
    assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
    client.set_encodings(RAW)
    first_update(client)
    assert sum(w * hh for _, _, w, hh, _ in client.rects) * 4 > 10 * viewer.SEND_CHUNK
    h.guest_writes(b"over tls")
    assert settle(client, server_image(h))
    client.type("typed")
    assert h.guest_reads(5) == b"typed"
    client.close()


def test_x509_vnc_checks_the_password_inside_tls(secured, certificates):
    h = secured(auth.Security(PASSWORD, tls=server_tls(certificates)))
    tls = client_tls(certificates["ca"])
    client = SecureClient(h.port, PASSWORD, tls=tls)
    assert client.types == [VENCRYPT, 2] and client.subtypes == [X509_VNC]
    assert first_update(client)
    client.close()
    with pytest.raises(PermissionError, match="authentication failed"):
        SecureClient(h.port, b"guess", tls=tls)


def test_tls_only_refuses_plain_viewers(secured, certificates):
    h = secured(auth.Security(PASSWORD, tls=server_tls(certificates), tls_only=True))
    with pytest.raises(ConnectionRefusedError, match="requires TLS"):
        SecureClient(h.port, PASSWORD, version=b"RFB 003.003\n")
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    sock.recv(12)
    sock.sendall(b"RFB 003.008\n")
    assert sock.recv(2) == bytes([1, VENCRYPT])
    sock.sendall(b"\x02")
    assert sock.recv(10) == b""
    sock.close()


def test_wrong_certificate_is_refused_by_the_viewer_and_harms_nobody(secured, certificates,
                                                                     caplog):
    h = secured(auth.Security(tls=server_tls(certificates)))
    good = SecureClient(h.port, tls=client_tls(certificates["ca"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        SecureClient(h.port, tls=client_tls(certificates["other_ca"]))
    assert wait_until(lambda: any("TLS handshake failed" in r.getMessage()
                                for r in caplog.records))
    h.guest_writes(b"carry on")
    assert settle(good, server_image(h))
    good.close()


@pytest.mark.parametrize("after_vencrypt", [
    pytest.param(b"\x00\x01", id="old-vencrypt-version"),
    pytest.param(b"\x00\x02" + struct.pack(">I", 256), id="bare-plain-subtype"),
    pytest.param(b"\x00\x02" + struct.pack(">I", X509_NONE) + b"\x16\x03\x01\x00\x05hello",
                 id="garbage-tls"),
])
def test_bad_vencrypt_is_closed_and_others_carry_on(secured, certificates, after_vencrypt):
    h = secured(auth.Security(tls=server_tls(certificates)))
    good = SecureClient(h.port, tls=client_tls(certificates["ca"]))
    bad = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    bad.recv(12)
    bad.sendall(b"RFB 003.008\n" + bytes([VENCRYPT]) + after_vencrypt)
    while bad.recv(4096):
        pass
    bad.close()
    h.guest_writes(b"unharmed")
    assert settle(good, server_image(h))
    good.close()


# --- Who may reach the reverse port ---------------------------------------------------------------


@pytest.mark.parametrize("networks,host,allowed", [
    (vncproxy.LOOPBACK, "127.0.0.1", True),
    (vncproxy.LOOPBACK, "127.3.4.5", True),
    (vncproxy.LOOPBACK, "::1", True),
    (vncproxy.LOOPBACK, "10.0.0.1", False),
    ([ipaddress.ip_network("10.0.0.0/8")], "10.1.2.3", True),
    ([ipaddress.ip_network("10.0.0.0/8")], "::ffff:10.1.2.3", True),
    ([ipaddress.ip_network("10.0.0.0/8")], "11.0.0.1", False),
    ([ipaddress.ip_network("fd00::/8")], "fd00::5", True),
])
def test_reverse_allow(networks, host, allowed):
    assert vncproxy.allow_only(networks)(host) is allowed


def test_reverse_allow_option():
    args = vncterm.parse_args(["--reverse-allow", "10.0.0.0/8", "--reverse-allow", "fd00::1"])
    assert args.reverse_allow == [ipaddress.ip_network("10.0.0.0/8"),
                                  ipaddress.ip_network("fd00::1/128")]


def test_foreign_guest_is_closed_before_a_byte_and_viewers_carry_on(secured, caplog):
    h = secured(auth.Security())
    viewer = SecureClient(h.port)
    first_update(viewer)
    desktops = vncproxy.Desktops(h.server.desktop_changed,
                                 allow=vncproxy.allow_only([ipaddress.ip_network("10.0.0.0/8")]))
    port = desktops.accept(socket.create_server(("127.0.0.1", 0)))[1]
    try:
        foreign = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert foreign.recv(100) == b""
        foreign.close()
        assert wait_until(lambda: any("refused: not a --reverse-allow address" in r.getMessage()
                                    for r in caplog.records))
        assert h.server.desktop is None
        h.guest_writes(b"undisturbed")
        assert settle(viewer, server_image(h))
    finally:
        desktops.stop()
        viewer.close()


# --- The command line ---------------------------------------------------------------------------


def run_vncterm(*options, env=None):
    """Start vncterm.py; return the process and its stdout lines up to the listening line."""
    argv = [sys.executable, "vncterm.py", "--port", "0", "--reverse-port", "0", *options]
    process = subprocess.Popen(argv, cwd=peers.REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines = []
    for raw in process.stdout:
        lines.append(raw.decode().rstrip("\n"))
        if lines[-1].startswith("vncterm: listening on"):
            break
    return process, lines


def stop(process):
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    process.stdout.close()
    process.stderr.close()


def test_cli_refuses_the_network_without_a_password():
    process, lines = run_vncterm("--listen", "0.0.0.0", "--command", "true")
    assert process.wait(10) == 1
    error = process.stderr.read().decode()
    assert "refusing to serve viewers on 0.0.0.0 without --password-file" in error
    assert "--insecure" in error
    process.stdout.close()
    process.stderr.close()


def test_cli_one_time_password_for_the_users_shell():
    env = dict(os.environ, SHELL="/bin/sh")
    process, lines = run_vncterm(env=env)
    try:
        (line,) = [line for line in lines if "one-time password" in line]
        password = line.split("viewers: ")[1].split()[0].encode()
        port = int(lines[-1].rsplit(":", 1)[1])
        with pytest.raises(PermissionError):
            SecureClient(port, b"guess")
        client = SecureClient(port, password)
        assert first_update(client)
        client.close()
    finally:
        stop(process)


def test_cli_no_auth_keeps_the_shell_open_on_loopback():
    process, lines = run_vncterm("--no-auth", env=dict(os.environ, SHELL="/bin/sh"))
    try:
        assert not any("password" in line for line in lines)
        client = SecureClient(int(lines[-1].rsplit(":", 1)[1]))
        assert client.types == [1]
        client.close()
    finally:
        stop(process)

