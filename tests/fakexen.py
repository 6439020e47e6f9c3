"""A fake Xen domain for tests: domain 7's keys in the fake xenstore, and `vncterm.py --domain 7`.

`FakeXen` puts fakexenstore.py's store and tools in a folder and plays the toolstack and
xenconsoled on it: it starts domain 7 with a console pty (any pty the test holds the master end
of, or the one QEMU names) and destroys it again.  `Guest` is such a console as xenconsoled
makes it: the test keeps the master end of a fresh raw pty, writes what the guest says and reads
what vncterm typed.  `shows` and `status_is` wait on what a console reader's screen holds.

`VncTermDomain` runs the whole program as a toolstack would start it, with `--domain 7` and the
fake tools as `--xenstore-prefix`, on ports of its own choosing that it reads back from
vncterm's stdout; `paint` is the guest output that shows coloured blocks, so a real viewer's
capture can be checked against them.
"""

import os
import select
import signal
import subprocess
import sys
import threading
import tty

import fakexenstore
import peers
import xen
from harness import screen_text

DOMAIN = 7
DOMAIN_PATH = f"/local/domain/{DOMAIN}"
TTY_KEY = f"{DOMAIN_PATH}/console/tty"
PORT_KEY = f"{DOMAIN_PATH}/console/vnc-port"
REVERSE_KEY = f"{DOMAIN_PATH}/console/vnc-reverse"


class FakeXen:
    """The fake store, the tools' prefix and a Xenstore using them."""

    def __init__(self, folder):
        self.store = fakexenstore.Store(folder / "xenstore.json")
        self.prefix = fakexenstore.install(folder / "bin", self.store.path)
        self.xenstore = xen.Xenstore(self.prefix)

    def start_domain(self, guest):
        """The toolstack builds the domain; xenconsoled names its console."""
        self.store.write(f"{DOMAIN_PATH}/name", "guest")
        self.store.write(TTY_KEY, guest.path)

    def destroy_domain(self, guest):
        """The toolstack removes the domain; xenconsoled lets go of its pty."""
        self.store.rm(DOMAIN_PATH)
        guest.hang_up()


class Guest:
    """A guest console as xenconsoled makes it: we keep the master end of a fresh pty."""

    def __init__(self):
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)

    def say(self, data):
        os.write(self.master, data)

    def heard(self, size, timeout=10.0):
        """What vncterm typed into the console: up to size bytes, b"" if nothing came."""
        data = b""
        while len(data) < size and readable(self.master, timeout):
            data += os.read(self.master, size - len(data))
        return data

    def hang_up(self):
        if self.master is not None:
            os.close(self.master)
            self.master = None


def readable(fd, timeout):
    """Wait until fd has something to read (poll, not select: fds may be numbered past 1024)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def shows(term, text, timeout=10.0):
    return peers.wait_until(lambda: text in screen_text(term), timeout)


def status_is(term, expected, timeout=10.0):
    """Wait until the status line contains expected ("" means: no status); return the last."""
    def look():
        return expected in term.status if expected else term.status == ""
    peers.wait_until(look, timeout)
    return term.status


class VncTermDomain:
    """`vncterm.py --domain N` as a toolstack would start it, on ports of its own choosing."""

    def __init__(self, fake, folder, options=()):
        self.fake = fake
        self.folder = folder
        self.pidfile = folder / "vncterm.pid"
        self.output = []
        self.port = self.reverse = None
        argv = [sys.executable, "vncterm.py", "--domain", str(DOMAIN), "--port", "0",
                "--reverse-port", "0", "--xenstore-prefix", fake.prefix,
                "--pidfile", str(self.pidfile), "--log-file", str(folder / "events.log"),
                "--log", str(folder / "console.log"), *options]
        with open(folder / "vncterm.stderr", "wb") as stderr:
            self.proc = subprocess.Popen(argv, cwd=peers.REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not peers.wait_until(lambda: self.port or self.proc.poll() is not None, 20):
            self.proc.kill()
        assert self.port, f"vncterm --domain never said where it listens\n{self.report()}"

    @property
    def address(self):
        return f"127.0.0.1::{self.port}"

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if match := peers.LISTENING.fullmatch(self.output[-1]):
                self.port = self.port or int(match[1])

    def report(self):
        stderr = peers.read_text(self.folder / "vncterm.stderr")[-3000:]
        return f"exit status {self.proc.poll()}\nstdout:\n" + "\n".join(self.output) + \
            f"\nstderr:\n{stderr}"

    def shows(self, guest, blocks, name):
        """Errors until a capture shows the blocks, which the guest paints again before each."""
        def look():
            guest.say(paint(blocks))
            capture = peers.vncdo_capture(self, self.folder / f"{name}.png")
            return peers.framebuffer_errors(capture, blocks)
        return peers.until_no_errors(look)

    def stop(self):
        """SIGTERM; assert a clean exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0, f"vncterm did not exit cleanly\n{self.report()}"

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        """Kill vncterm if the test left it running (a test that passes has stopped it)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def desktop_address(server):
    """Where vncterm said guest desktops connect (vncproxy's line), as ADDR:PORT."""
    prefix = "vncterm: guest desktops connect to "
    return next((line[len(prefix):] for line in server.output if line.startswith(prefix)), None)


def paint(blocks):
    """Guest output that clears the screen and paints the blocks, as peers.paint_command does."""
    out = "\033[2J"
    for block in blocks:
        for row in range(block.row, block.row + block.height):
            colour = peers.SGR_BACKGROUND[block.colour]
            out += f"\033[{row + 1};{block.col + 1}H\033[{colour}m{' ' * block.width}\033[0m"
    return (out + "\033[12;1H").encode()

