"""Real peers for end-to-end tests: processes to start, pictures to read.

A unit test can only prove that vncterm agrees with our own reading of RFC 6143. The tests built
on this module prove something stronger: that programs written by other people (vncdotool,
vncsnapshot, TigerVNC's vncviewer, gtk-vnc's gvncviewer) connect, show the console and send keys
that reach the pty. Everything here treats vncterm as a black box: it is started as a subprocess
through its command-line contract (`--command`, `--port 0`, the "listening on" line, SIGTERM)
and judged only by what a viewer shows and what the spawned command receives.

Three groups of helpers live here.

Processes. `VncTerm` starts `vncterm.py --port 0` and reads the port from its one promised stdout
line; `stop()` sends SIGTERM and insists on exit status 0. `Xvfb` starts a virtual X screen with
`-displayfd`, so the X server itself picks a free display number (safe when test runs overlap),
starts viewers on it and takes screenshots with ImageMagick's `import`. Every process logs to a
file in the test's artifacts folder, so a failure leaves its evidence behind. `VncdoViewer` keeps
vncdotool's Python API connected in a child process, for a viewer that must already be there when
something changes, and `TigerViewer` is TigerVNC's vncviewer on an Xvfb screen; `free_port`
names a loopback port for a peer that cannot be told to pick one.

Pictures. The tests paint a pattern of coloured blocks with their own `printf` and look for it in
what a viewer shows. A capture straight from a viewer (vncdotool, vncsnapshot) is the framebuffer
itself, so the cell size is the image size divided by 80x25. A screenshot of a viewer window is
not: the window may sit anywhere and carry a menu bar. There the red block is the landmark: its
bounding box gives both the cell size and the console's origin, and the other blocks must then be
exactly where the pattern put them. Nothing about fonts or geometry is taken from the server.
Colours are named with wide tolerances, because palettes differ and JPEG smears.

Policy. `require(peer)` skips a test whose peer is missing on a developer's machine, but fails it
when CI is "true": a green CI run must mean the viewers really ran. `wait_until` polls, because
end-to-end waits are real; the tests never assert how long anything took.
"""

import contextlib
import importlib.util
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
COLUMNS, ROWS = 80, 25
INSTALL_COMMAND = "make peers"
LISTENING = re.compile(r"vncterm: listening on 127\.0\.0\.1:(\d+)")
SGR_BACKGROUND = {"red": 41, "green": 42, "blue": 44}

missing_peers = {}  # peer -> how to get it
skipped_tests = set()


def require(peer, installed=None, how=INSTALL_COMMAND):
    """Skip (or, under CI=true, fail) the test unless program or module `peer` is installed.

    `installed`, when given, is the test's own answer to "is it there?"; `how` tells how to get
    it (root, or an optional module, are not Debian packages).
    """
    if installed is None:
        installed = shutil.which(peer) or importlib.util.find_spec(peer)
    if installed:
        return
    reason = f"peer {peer!r} is not installed (get it with: {how})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    missing_peers[peer] = how
    skipped_tests.add(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])
    pytest.skip(reason)


def recv_exactly(sock, size, peer):
    """`size` bytes from sock; ConnectionError naming `peer` if it closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"{peer} closed the connection")
        data += chunk
    return bytes(data)


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout=15.0, interval=0.1):
    """Call predicate until it returns something truthy; return that, or its last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def until_no_errors(look, timeout=20.0, interval=0.3):
    """Call look() (which returns a list of errors) until it finds none; return its last list."""
    deadline = time.monotonic() + timeout
    while (errors := look()) and time.monotonic() < deadline:
        time.sleep(interval)
    return errors


def run(argv, timeout=30, env=None):
    """Run a peer command to completion and return its result; raise with its output if it fails."""
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                            env=env)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited with {result.returncode}\n"
            f"stdout: {result.stdout.decode(errors='replace')}\n"
            f"stderr: {result.stderr.decode(errors='replace')}"
        )
    return result


def read_text(path):
    """Return the text in path, or '' while it does not exist yet."""
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


class VncTerm:
    """A vncterm.py subprocess serving one console; .port, .proc, .address and stop()."""

    def __init__(self, command, log_path, port=0, options=(), timeout=20, python=sys.executable):
        self.log_path = log_path
        self.output = []
        self.port = None
        argv = [python, "vncterm.py", "--reverse-port", "0", *options, "--command", command,
                "--port", str(port), "--size", f"{COLUMNS}x{ROWS}"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if not wait_until(lambda: self.port or self.proc.poll() is not None, timeout):
            self.proc.kill()
        if self.port is None:
            self.proc.wait()
            raise AssertionError(f"vncterm never said where it listens\n{self.report()}")

    @property
    def address(self):
        """The server as vncdotool, vncsnapshot and vncviewer spell it: host::port."""
        return f"127.0.0.1::{self.port}"

    def _read_stdout(self):
        """Keep stdout drained, and note the port from the listening line."""
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.output.append(line)
            match = LISTENING.fullmatch(line)
            if match and self.port is None:
                self.port = int(match[1])

    def report(self):
        """Exit status, stdout and the stderr log, for failure messages."""
        stderr = read_text(self.log_path)[-4000:]
        return (f"exit status: {self.proc.returncode}\nstdout:\n" + "\n".join(self.output)
                + f"\nstderr (tail of {self.log_path}):\n{stderr}")

    def stop(self, timeout=10):
        """Send SIGTERM, wait, and assert that vncterm exited with status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"vncterm ignored SIGTERM for {timeout} s\n{self.report()}") from None
        assert self.proc.returncode == 0, f"vncterm did not exit cleanly\n{self.report()}"


class XServer:
    """An X server on a display number of its own choosing (-displayfd), with the programs
    started on it; `argv` is its command line without -displayfd, logged to artifacts/NAME.log."""

    def __init__(self, folder, argv, name):
        self.folder = folder
        self.children = []
        self.log_path = folder / f"{name}.log"
        read_end, write_end = os.pipe()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [argv[0], "-displayfd", str(write_end), *argv[1:]],
                pass_fds=[write_end], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(write_end)
        try:
            self.display = ":" + self._read_display_number(read_end, argv[0])
        finally:
            os.close(read_end)
        self.env = dict(os.environ, DISPLAY=self.display, NO_AT_BRIDGE="1")

    def _read_display_number(self, read_end, program, timeout=15):
        """Read the number the server writes to -displayfd once it accepts clients."""
        text = b""
        deadline = time.monotonic() + timeout
        while not text.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                self.proc.kill()
                raise AssertionError(f"{program} gave no display number; see {self.log_path}")
            chunk = os.read(read_end, 16)
            if not chunk:
                raise AssertionError(f"{program} exited; see {self.log_path}")
            text += chunk
        return text.decode().strip()

    def start(self, argv, name):
        """Start a program (a viewer) on this screen, logging to artifacts/NAME.log."""
        with open(self.folder / f"{name}.log", "wb") as log:
            child = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        self.children.append(child)
        return child

    def run(self, *argv):
        """Run a short X command (xdotool) on this screen and return its stdout as text."""
        return run(argv, env=self.env).stdout.decode().strip()

    def screenshot(self, name):
        """Save the whole screen as artifacts/NAME.png and return it as an RGB image."""
        path = self.folder / f"{name}.png"
        run(["import", "-display", self.display, "-window", "root", str(path)])
        return load_rgb(path)

    def stop(self):
        """Stop every program started here, then the X server."""
        for process in [*self.children, self.proc]:
            stop_process(process)


class Xvfb(XServer):
    """A virtual X screen for the viewers under test."""

    def __init__(self, folder, size="1280x1024"):
        super().__init__(folder, ["Xvfb", "-screen", "0", f"{size}x24", "-nolisten", "tcp", "-br"],
                         "Xvfb")


class Xvnc(XServer):
    """TigerVNC's Xvnc as a guest's X server, not resetting when its last client leaves (so a
    painted root stays painted); `options` are added to its command line."""

    def __init__(self, folder, size, name="Xvnc", options=()):
        super().__init__(folder, ["Xvnc", "-geometry", "%dx%d" % size, "-depth", "24",
                                  "-nolisten", "tcp", "-noreset", *options], name)


VNCDO_DRIVER = r"""
import sys
from vncdotool import api

client = api.connect(sys.argv[1], timeout=30)
client.refreshScreen()
print("connected", flush=True)
for line in sys.stdin:
    verb, *args = line.split()
    getattr(client, verb)(*(int(a) if a.isdigit() else a for a in args))
    print("done", flush=True)
client.disconnect()
api.shutdown()
"""


class VncdoViewer:
    """vncdotool's API kept connected in a child process, driven one method call per line."""

    def __init__(self, server, folder, name="vncdo-viewer"):
        self.folder = folder
        self.name = name
        self.replies = queue.Queue()
        with open(folder / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", VNCDO_DRIVER, server.address], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read_replies, daemon=True)
        self.reader.start()
        self._expect("connected")

    def _read_replies(self):
        for line in self.proc.stdout:
            self.replies.put(line.strip())
        self.replies.put("exited")

    def _expect(self, reply, timeout=30.0):
        try:
            got = self.replies.get(timeout=timeout)
        except queue.Empty:
            got = "nothing"
        if got != reply:
            log = read_text(self.folder / f"{self.name}.log")[-3000:]
            raise AssertionError(f"vncdotool viewer answered {got!r}, not {reply!r}\n{log}")

    def do(self, *calls):
        """Call vncdotool client methods in order, e.g. do('keyPress ctrl-alt-f1')."""
        for call in calls:
            try:
                self.proc.stdin.write(call + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass  # it exited; _expect says so, with its log
            self._expect("done")

    def capture(self, name):
        """A capture of the whole framebuffer as this viewer has it now."""
        path = self.folder / f"{name}.png"
        # The first capture after a resize may be answered by an update already on its way.
        self.do(f"captureScreen {path}", f"captureScreen {path}")
        return load_rgb(path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        self.proc.stdout.close()


class TigerViewer:
    """TigerVNC's vncviewer on an Xvfb screen, read back by screenshot, driven by xdotool."""

    def __init__(self, xvfb, server, name="vncviewer", encoding="Tight"):
        require("vncviewer")
        require("xdotool")
        self.xvfb = xvfb
        self.name = name
        self.shots = 0
        xvfb.start(["vncviewer", "Shared=1", f"PreferredEncoding={encoding}", "AutoSelect=0",
                    server.address], name)

    def screenshot(self):
        self.shots += 1
        return self.xvfb.screenshot(f"{self.name}-{self.shots}")

    def hotkey(self, key):
        """Press Ctrl-Alt-KEY in the viewer's window (focused and clicked first: no WM here)."""
        window = self.xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class",
                               "TigerVNC").split()[0]
        self.xvfb.run("xdotool", "windowfocus", "--sync", window)
        self.xvfb.run("xdotool", "mousemove", "--window", window, "5", "5", "click", "1")
        self.xvfb.run("xdotool", "key", f"ctrl+alt+{key}")


def stop_process(process, timeout=5, group=False):
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds (websockify with a
    connection open sometimes ignores SIGTERM).  `group`: signal the process group of a
    process started with start_new_session, so children it forked go too."""
    def send(signum):
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)

    send(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def load_rgb(path):
    """Open an image file fully and return it in RGB mode."""
    with Image.open(path) as image:
        return image.convert("RGB")


def vncdo(server, *actions):
    """Run one vncdotool command line (connect, do actions, disconnect) against server."""
    return run([sys.executable, "-m", "vncdotool.command", "-s", server.address, *actions])


def vncdo_capture(server, path):
    """Capture the framebuffer with vncdotool into path and return the image."""
    # vncdotool 1.4.2 sizes its first capture by the first rectangle it receives, which may be
    # narrower than the framebuffer; the second capture in the same session is whole.
    vncdo(server, "capture", str(path), "capture", str(path))
    return load_rgb(path)


def vncsnapshot_capture(server, path, encoding="raw"):
    """Capture the framebuffer with vncsnapshot (RFB 3.3) into a .jpg path; return it."""
    # vncsnapshot's Tight decoder is known to hang against other servers: never ask it for Tight.
    run(["vncsnapshot", "-quiet", "-encodings", encoding, server.address, str(path)])
    return load_rgb(path)


@dataclass(frozen=True)
class Block:
    """A rectangle of console cells painted with one background colour."""

    colour: str
    col: int
    row: int
    width: int = 6
    height: int = 2

    def cells(self):
        """The cells the block covers, as (col, row)."""
        return [(col, row) for row in range(self.row, self.row + self.height)
                for col in range(self.col, self.col + self.width)]

    def border(self):
        """The cells just around the block that lie on the screen; they must stay black."""
        ring = [(col, row) for row in range(self.row - 1, self.row + self.height + 1)
                for col in range(self.col - 1, self.col + self.width + 1)]
        return [(col, row) for col, row in ring
                if 0 <= col < COLUMNS and 0 <= row < ROWS and (col, row) not in self.cells()]


CORNERS = [(0, 0), (COLUMNS - 1, 0), (0, ROWS - 1), (COLUMNS - 1, ROWS - 1)]


def paint_command(blocks, cursor=(0, 11)):
    """A printf command that clears the screen, paints the blocks and parks the cursor."""
    parts = [r"\033[2J"]
    for block in blocks:
        for row in range(block.row, block.row + block.height):
            sgr = SGR_BACKGROUND[block.colour]
            parts.append(rf"\033[{row + 1};{block.col + 1}H\033[{sgr}m{' ' * block.width}\033[0m")
    parts.append(rf"\033[{cursor[1] + 1};{cursor[0] + 1}H")
    return "printf '" + "".join(parts) + "'"


def colour_name(rgb):
    """Name a pixel: black, red, green, blue or other (tolerant of palettes and JPEG)."""
    if max(rgb) < 60:
        return "black"
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        others = [value for index, value in enumerate(rgb) if index != channel]
        if rgb[channel] > 110 and max(others) < 80:
            return name
    return "other"


def cell_centre(region, col, row):
    """The pixel at the centre of cell (col, row); region = (left, top, right, bottom)."""
    left, top, right, bottom = region
    x = left + (col + 0.5) * (right - left) / COLUMNS
    y = top + (row + 0.5) * (bottom - top) / ROWS
    return int(x), int(y)


def cell_rgb(image, region, col, row):
    """The RGB at the centre of cell (col, row) of the console at region in image."""
    return image.getpixel(cell_centre(region, col, row))


def whole_image(image):
    """The region of a capture that is the framebuffer itself."""
    return (0, 0, image.width, image.height)


def find_console(image, marker):
    """Locate the console in a screenshot from the red marker block; None if it is not there."""
    red, green, blue = image.split()
    mask = ImageChops.multiply(
        ImageChops.multiply(red.point(lambda v: 255 if v > 110 else 0),
                            green.point(lambda v: 255 if v < 80 else 0)),
        blue.point(lambda v: 255 if v < 80 else 0))
    box = mask.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if mask.crop(box).histogram()[255] < 0.95 * (x1 - x0) * (y1 - y0):
        return None
    cell_width = (x1 - x0) / marker.width
    cell_height = (y1 - y0) / marker.height
    left = x0 - marker.col * cell_width
    top = y0 - marker.row * cell_height
    return (left, top, left + COLUMNS * cell_width, top + ROWS * cell_height)


def framebuffer_errors(image, blocks, corners=CORNERS):
    """Errors in a capture that is the framebuffer itself: its size, then the blocks."""
    if image.width % COLUMNS or image.height % ROWS:
        return [f"a {image.width}x{image.height} capture is not {COLUMNS}x{ROWS} whole cells"]
    return pattern_errors(image, whole_image(image), blocks, corners)


def screenshot_errors(image, blocks, corners=CORNERS):
    """Errors in a screenshot with a viewer window somewhere in it, found by the red block."""
    marker = next(block for block in blocks if block.colour == "red")
    return pattern_errors(image, find_console(image, marker), blocks, corners)


def pattern_errors(image, region, blocks, corners=CORNERS):
    """Every cell where the image disagrees with the painted blocks and the black `corners`."""
    if region is None:
        return ["no solid red marker block in the image: the console is missing or misdrawn"]
    expected = {cell: "black" for cell in corners}
    for block in blocks:
        expected.update({cell: "black" for cell in block.border()})
    for block in blocks:
        expected.update({cell: block.colour for cell in block.cells()})
    left, top, right, bottom = region
    if left < 0 or top < 0 or right > image.width or bottom > image.height:
        return [f"the console at {region} does not fit in the {image.width}x{image.height} image"]
    errors = []
    for (col, row), colour in sorted(expected.items()):
        rgb = cell_rgb(image, region, col, row)
        if colour_name(rgb) != colour:
            errors.append(f"cell ({col},{row}): expected {colour}, got {colour_name(rgb)} {rgb}")
    return errors


# A command for a console whose size a test watches: it writes `stty size` at start and on SIGWINCH.
WATCH_SIZE = """report() {{ stty size > {file}.new; mv {file}.new {file}; }}
trap report WINCH
report
while :; do sleep 1 & wait; done
"""


def self_signed_certificate(folder):
    """A certificate and key for 127.0.0.1 made with openssl, valid for a day."""
    require("openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
               "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)])
    return cert, key


def accepts(port):
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
