"""vncterm.start: every part made in order, each stopped by the ExitStack, also on failure.

`start` opens the ports and makes the server, the desktops and the browser relay with what
each needs; `serve` runs them.  Here `start` runs in-process with a command console, and the
test checks what a reader of `start` is promised: the parts are wired at construction, and
closing the stack (after a failure half-way, or after serving) leaves no thread, socket or
file behind.
"""

import contextlib
import socket
import threading

import pytest

import auth
import render
import service
import vncterm
from harness import open_fds
from peers import wait_until as wait_for

FONT = render.load_font(None)[0]


def options(*extra):
    return vncterm.parse_args(["--command", "cat", "--port", "0", "--reverse-port", "0", *extra])


@pytest.fixture
def no_leaks():
    threads, fds = set(threading.enumerate()), open_fds()
    yield
    assert wait_for(lambda: set(threading.enumerate()) <= threads), threading.enumerate()
    assert open_fds() <= fds


def test_the_parts_are_wired_at_construction_and_stopped_in_reverse(no_leaks, tmp_path):
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    args = options("--password-file", str(password))
    with contextlib.ExitStack() as stops:
        server, term = vncterm.start(args, FONT, service.Service(args), stops)
        assert isinstance(server.security, auth.Security)
        assert server.security.password == b"secret"
        assert server.console.console is term
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        stops.callback(thread.join)
        stops.callback(server.shutdown)
        viewer = socket.create_connection(server.server_address[:2], timeout=5)
        assert viewer.recv(12) == b"RFB 003.008\n"
        viewer.close()


def test_a_part_that_fails_stops_the_parts_made_before_it(no_leaks, tmp_path):
    args = options("--web", "0", "--novnc-dir", str(tmp_path))
    with pytest.raises(OSError, match="no noVNC"):
        with contextlib.ExitStack() as stops:
            vncterm.start(args, FONT, service.Service(args), stops)


def test_a_port_in_use_is_reported_with_its_option(no_leaks):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        for argv, message in ((["--port", port], "cannot listen on 127.0.0.1:"),
                              (["--reverse-port", port], "cannot listen for guest desktops")):
            args = options(*argv)
            with pytest.raises(OSError, match=message):
                with contextlib.ExitStack() as stops:
                    vncterm.start(args, FONT, service.Service(args), stops)
