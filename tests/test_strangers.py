"""Strangers before authentication against a real vncterm, with vncdotool as the viewer.

The attackers (strangers.py) are raw sockets: silent ones that vncterm must not let hold the
handshake caps, and password guessers that must not lock the right password out.  Each test
judges only whether the real viewer got in; how fast is measured by strangers.py, not here.
"""

import pytest

import peers
from strangers import PASSWORD, Attackers, guess, idle

TRIES = 3


def viewer_gets_in(server, tmp_path, *options):
    """One vncdotool capture, with its own time limit: True if it got a picture."""
    try:
        peers.vncdo(server, *options, "--timeout", "15", "capture", str(tmp_path / "x.png"))
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("count,same_address", [(4, True), (16, False)],
                         ids=["own-address", "sixteen-addresses"])
def test_silent_sockets_do_not_keep_a_viewer_out(start_vncterm, tmp_path, count, same_address):
    server = start_vncterm("cat", options=["--no-auth"])
    with Attackers(count, same_address, server.port, idle):
        assert peers.wait_until(lambda: len(open_connections(server.port)) >= count)
        got_in = [viewer_gets_in(server, tmp_path) for _ in range(TRIES)]
    assert all(got_in), got_in


def test_the_password_gets_in_while_its_address_keeps_guessing(start_vncterm, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    server = start_vncterm("cat", options=["--password-file", str(password_file)])
    with Attackers(1, True, server.port, guess) as attackers:
        assert peers.wait_until(lambda: attackers.answers >= 3)
        got_in = [viewer_gets_in(server, tmp_path, "-p", PASSWORD) for _ in range(TRIES)]
    assert all(got_in), got_in


def open_connections(port):
    """Established TCP connections to `port` on loopback, from /proc/net/tcp."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return [row for row in rows if row[2].endswith(f":{port:04X}") and row[3] == "01"]
