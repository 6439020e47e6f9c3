"""A fake Xen domain for tests: domain 7's keys in the fake xenstore, and `vncterm.py --domain 7`.

`FakeXen` puts fakexenstore.py's store and tools in a folder and plays the toolstack and
xenconsoled on it: it starts domain 7 with a console pty (any pty the test holds the master end
of, or the one QEMU names) and destroys it again.  `VncTermDomain` runs the whole program as a
toolstack would start it, with `--domain 7` and the fake tools as `--xenstore-prefix`, on ports
of its own choosing that it reads back from vncterm's stdout; `paint` is the guest output that
shows coloured blocks, so a real viewer's capture can be checked against them.
"""

import signal
import subprocess
import sys
import threading

import fakexenstore
import peers
import xen

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


def paint(blocks):
    """Guest output that clears the screen and paints the blocks, as peers.paint_command does."""
    out = "\033[2J"
    for block in blocks:
        for row in range(block.row, block.row + block.height):
            colour = peers.SGR_BACKGROUND[block.colour]
            out += f"\033[{row + 1};{block.col + 1}H\033[{colour}m{' ' * block.width}\033[0m"
    return (out + "\033[12;1H").encode()

