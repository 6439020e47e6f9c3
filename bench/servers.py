"""servers.py: the two servers the benchmark compares, the files they are fed, and how
their processes are measured.

`VncTerm` and `Xvnc` are the starters of the real-peer tests (tests/peers.py), extended only
with what the benchmark measures: the process ids whose CPU time and memory count, vncterm's
reverse port, and the xterm the peer runs.  `connect` reaches either server with the
benchmark's timing client.  The input files are generated with fixed seeds into bench/work/,
so every run and both servers see the same bytes.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

from client import CURSOR, RAW, VIEWER_ENCODINGS, Viewer
from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import peers  # noqa: E402  (the tests' process helpers, found through the line above)

OUT = REPO / "bench"
WORK = OUT / "work"
COLUMNS, ROWS = 80, 25
XTERM_FONT = "8x16"
DESKTOP = (1024, 768)
PEER = "Xvnc+xterm"
REVERSE = re.compile(r"guest desktops connect to [\d.]+:(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- Workload files ---------------------------------------------------------------------------


def write_workloads() -> None:
    """The generated files (fixed seeds) and the scripts the shells run."""
    WORK.mkdir(parents=True, exist_ok=True)
    listing = coloured_listing(random.Random(6))
    (WORK / "listing.txt").write_text(listing)
    (WORK / "screen.txt").write_text("\n".join(listing.splitlines()[1000:1024]) + "\n")
    (WORK / "plain.txt").write_text(plain_text(random.Random(20), 20_000_000))
    for name, command in (("seq", "seq 1 200000"), ("listing", "cat bench/work/listing.txt")):
        (WORK / f"{name}.sh").write_text(f"{command}\n: > bench/work/done\n")
    (WORK / "flood.sh").write_text("while :; do seq 1 100000; done\n")
    for name, seed in (("a", 1), ("b", 2)):
        photo(seed).save(WORK / f"photo-{name}.png")


WORDS = ("libc", "python3", "gtk", "x86_64-linux-gnu", "systemd", "perl", "locale", "firmware",
         "modules", "cups", "dbus", "udev", "ssl", "share", "apt", "gconv", "icu", "mesa")


def coloured_listing(chooser: random.Random, entries: int = 20000) -> str:
    """What `ls --color=always -lR /usr/lib` prints, made up: directories, files, links."""
    lines, directory = [], "/usr/lib"
    for number in range(entries):
        if number % 40 == 0:
            directory = "/usr/lib/" + "/".join(chooser.sample(WORDS, chooser.randint(1, 3)))
            lines += ["", f"{directory}:", f"total {chooser.randint(8, 9000)}"]
        name = "-".join(chooser.sample(WORDS, chooser.randint(1, 3)))
        kind = chooser.random()
        if kind < 0.2:
            mode, shown = "drwxr-xr-x", f"\x1b[01;34m{name}\x1b[0m"
        elif kind < 0.35:
            target = f"{name}.so.{chooser.randint(0, 9)}"
            mode, shown = "lrwxrwxrwx", f"\x1b[01;36m{name}.so\x1b[0m -> {target}"
        elif kind < 0.5:
            mode, shown = "-rwxr-xr-x", f"\x1b[01;32m{name}\x1b[0m"
        else:
            mode, shown = "-rw-r--r--", f"{name}.{chooser.choice(['py', 'h', 'conf', 'so.1'])}"
        size = chooser.randint(0, 2_000_000)
        day = chooser.randint(1, 28)
        lines.append(f"{mode} 1 root root {size:8d} Mar {day:2d} 10:{day + 10:02d} {shown}")
    return "\n".join(lines) + "\n"


def plain_text(chooser: random.Random, size: int) -> str:
    """Log lines of plain ASCII, `size` bytes in all."""
    lines, total, number = [], 0, 0
    while total < size:
        number += 1
        words = " ".join(chooser.choices(WORDS, k=chooser.randint(2, 9)))
        line = f"[{number / 1000:12.6f}] kernel: {words} {chooser.randint(0, 1 << 32):x}"
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def photo(seed: int) -> Image.Image:
    """A photograph-like picture the size of the desktop: smooth shapes and a little noise."""
    bands = [Image.effect_mandelbrot(DESKTOP, (-2.2 + seed * 0.1 + b * 0.05, -1.2,
                                                 1.0 - b * 0.1, 1.2), 64 + 32 * b)
             for b in range(3)]
    noise = Image.effect_noise(DESKTOP, 12)
    bands = [ImageChops.add(band.point(lambda v, b=b: (v * (3 + b)) % 256), noise, 1, -6)
             for b, band in enumerate(bands)]
    return Image.merge("RGB", bands)


# --- Processes ---------------------------------------------------------------------------------


def cpu_seconds(pids) -> float:
    """User plus system time of the processes (not their children), from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def memory_mb(pids, field: str = "VmRSS") -> float:
    """Resident memory of the processes in MB (VmHWM: the peak), from /proc."""
    total = 0
    for pid in pids:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        total += int(match[1])
    return total / 1024


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true, and return that; raise on timeout."""
    result = peers.wait_until(predicate, timeout, interval=0.02)
    if not result:
        raise TimeoutError(f"gave up waiting for {what}")
    return result


def wait_cpu(process: subprocess.Popen) -> float:
    """Wait for a child to exit; return the CPU seconds it used."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


class VncTerm(peers.VncTerm):
    """vncterm.py serving `command`, started as the tests start it; .reverse_port, .pids."""

    def __init__(self, command: str, options=()) -> None:
        super().__init__(command, OUT / "vncterm.log", options=options)
        self.pids = [self.proc.pid]
        line = wait_for(self.reverse_line, 20, "vncterm's reverse port")
        self.reverse_port = int(line[1])

    def reverse_line(self):
        """The match of the line that names the reverse port, once vncterm has printed it."""
        return next(filter(None, map(REVERSE.search, list(self.output))), None)

    def wait_exit(self) -> float:
        """Wait for vncterm to exit on its own; return the CPU seconds it used."""
        return wait_cpu(self.proc)


class Xvnc(peers.Xvnc):
    """TigerVNC's Xvnc, started as the tests start it, serving viewers on a free loopback port
    without authentication; .pids are the processes whose CPU and memory count as the peer's."""

    def __init__(self, size=(COLUMNS * 8, ROWS * 16)) -> None:
        self.port = peers.free_port()
        super().__init__(OUT, size, options=("-rfbport", str(self.port), "-localhost",
                                             "-SecurityTypes", "None"))
        self.pids = [self.proc.pid]

    def xterm(self, command: str, keep_pid: bool = True) -> subprocess.Popen:
        """An 80x25 xterm at the top left, 8x16 font, no borders, running `command`."""
        child = self.start(["xterm", "-geometry", f"{COLUMNS}x{ROWS}+0+0", "-fn", XTERM_FONT,
                            "-bw", "0", "-b", "0", "-bg", "black", "-fg", "white",
                            "-e", "sh", "-c", command], "xterm")
        if keep_pid:
            self.pids.append(child.pid)
        return child


def peer_with_xterm(command: str) -> Xvnc:
    """The peer: Xvnc the size of the console, with one xterm running `command`."""
    server = Xvnc()
    server.xterm(command)
    return server


def connect(server, encodings=VIEWER_ENCODINGS, decode: bool = True) -> Viewer:
    """A viewer with the whole screen and the pointer on the console (focus follows it).

    A decoding viewer also waits until the console shows something (xterm may not be up yet,
    and keys typed into an empty X screen are lost).
    """
    viewer = wait_for(lambda: try_connect(server.port, encodings, decode), 20, "the server")
    viewer.pointer(COLUMNS * 4, ROWS * 8)
    viewer.request(False)
    viewer.next_update()
    while decode and viewer.image.getbbox() is None:
        viewer.next_update()
    return viewer


def try_connect(port, encodings, decode):
    """A Viewer, or None while the server is not listening yet."""
    try:
        return Viewer(port, encodings, decode)
    except (ConnectionError, OSError):
        return None


def matches_fresh_viewer(server, viewer: Viewer) -> bool:
    """Does a viewer that connects now get exactly the picture `viewer` shows?"""
    fresh = connect(server, (RAW, CURSOR))
    try:
        return fresh.image.tobytes() == viewer.image.tobytes()
    finally:
        fresh.close()
