"""TightVNC 1.3's X server as a guest desktop: it must survive typing into an xterm.

Xtightvnc reverse-connects with `tightvncconnect`, which tries once and never again.  When xterm
hides the pointer as you type, Xtightvnc sends a 1x2 cursor whose hotspot is (0,2), just outside
the image (issue 12 item 3).  vncterm used to refuse that as a protocol error and drop the guest
at the first keystroke, for good.  Here a vncdotool viewer types two lines through vncterm into
an xterm on the guest, and both lines must arrive with the desktop still connected.

Xtightvnc predates -displayfd, so the test picks a free display number itself; xdotool crashes
against it, so readiness is read with xdpyinfo and xwininfo instead.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

import peers
from guestdesktop import XTERM_GEOMETRY, XTERM_INSIDE, log_count, reverse_port

ARRIVED = re.compile(r"guest desktop \S+ connected, 1024x768")
LEFT = re.compile(r"guest desktop \S+ disconnected|guest \S+: (protocol error|internal error)")


def free_display():
    """A display number with neither a socket nor a lock file, from the top of a quiet range."""
    for number in range(99, 40, -1):
        if not (Path(f"/tmp/.X11-unix/X{number}").exists()
                or Path(f"/tmp/.X{number}-lock").exists()):
            return number
    raise AssertionError("no free X display number in 41..99")


class Xtightvnc:
    """TightVNC 1.3's Xvnc on a display of its own, with no viewer port open beyond loopback."""

    def __init__(self, folder, attempts=3):
        self.folder = folder
        self.children = []
        for _ in range(attempts):  # another test may take the same display number first
            if self._start():
                return
        raise AssertionError("Xtightvnc did not start; see " + str(folder / "Xtightvnc.log"))

    def _start(self):
        """Start on a free display; True once it accepts X clients, False if it exited."""
        self.display = f":{free_display()}"
        self.env = dict(os.environ, DISPLAY=self.display)
        with open(self.folder / "Xtightvnc.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["Xtightvnc", self.display, "-geometry", "1024x768", "-depth", "24",
                 "-rfbport", str(peers.free_port()), "-localhost", "-nolisten", "tcp"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if not peers.wait_until(lambda: self.answers("xdpyinfo") or self.proc.poll() is not None):
            peers.stop_process(self.proc)
            raise AssertionError("Xtightvnc never accepted X clients")
        return self.proc.poll() is None

    def answers(self, *argv):
        """True if the X command runs successfully on this display."""
        return subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True).returncode == 0

    def xterm(self, command):
        """An xterm running `command`, once its window is on the screen."""
        with open(self.folder / "xterm.log", "wb") as log:
            self.children.append(subprocess.Popen(
                ["xterm", "-geometry", XTERM_GEOMETRY, "-e", "sh", "-c", command],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        assert peers.wait_until(lambda: "XTerm" in peers.run(
            ["xwininfo", "-root", "-tree"], env=self.env).stdout.decode())

    def connect(self, port):
        """tightvncconnect to a listening viewer (vncterm's reverse port); it tries only once."""
        peers.run(["tightvncconnect", "-display", self.display, f"127.0.0.1:{port}"],
                  env=self.env)

    def stop(self):
        for process in [*self.children, self.proc]:
            peers.stop_process(process)


@pytest.fixture
def tightvnc(artifacts):
    for peer in ("Xtightvnc", "tightvncconnect", "xterm", "xdpyinfo", "xwininfo", "vncdotool"):
        peers.require(peer)
    server = Xtightvnc(artifacts)
    yield server
    server.stop()


def test_typing_into_an_xterm_on_a_tightvnc_guest_keeps_it_connected(
        start_vncterm, tightvnc, artifacts):
    typed = artifacts / "typed.txt"
    tightvnc.xterm(f"exec cat > {typed}")
    server = start_vncterm("cat", options=("--verbose", "--reverse-port", "0"))
    tightvnc.connect(reverse_port(server))
    assert peers.wait_until(lambda: log_count(server, ARRIVED)), server.report()
    peers.vncdo(server, "move", *map(str, XTERM_INSIDE), "type", "hello", "key", "enter")
    peers.vncdo(server, "move", *map(str, XTERM_INSIDE), "type", "world", "key", "enter")
    assert peers.wait_until(lambda: peers.read_text(typed) == "hello\nworld\n"), (
        f"the xterm got {peers.read_text(typed)!r}\n{server.report()}")
    assert not log_count(server, LEFT), server.report()
