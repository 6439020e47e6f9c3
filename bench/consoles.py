#!/usr/bin/env python3
"""bench/consoles.py: what one more console costs in memory, with its scrollback full.

What.  `--domain all` serves every domain of a host from one process, so the figure that
matters is the cost of one more console: (RSS with N consoles - RSS with 1) / (N - 1), each
console having printed 1,200 lines of coloured log output (a boot log fills the 1,000-line
scrollback) and no viewer watching.  Issue 13 asks for at most 2 MB, 1 MB being excellent.

How.  Each count runs in a fresh Python process, which builds its consoles the way vncterm.py
does: a `console.Console` reading a `sources.PtySource` (a pty whose other end stands for
xenconsoled) and a `display.ConsoleDisplay` drawing it, all sharing one `render.Glyphs`.  The
log is written into each pty's other end; once every console shows its last line and its
reader has compacted the scrollback (which it does when output pauses), the process collects
garbage and reads its resident set size and thread count from /proc.
`--viewer` then asks each display for its whole picture once and lets it go, as a viewer
that came and left would, to show that nothing rendered stays behind.

    .venv/bin/python bench/consoles.py            # 1 and 30 consoles
    .venv/bin/python bench/consoles.py --counts 1 100
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG_LINES = 1200
COLUMNS, LINES = 80, 25
TIMEOUT = 120.0
IDLE_SECONDS = 3.0
SETTLE_SECONDS = 1.0
END = "end of the log"

COLOURS = ["\x1b[0;32m", "\x1b[0;31m", "\x1b[1;33m", "\x1b[0;1;39m", "\x1b[0;36m"]
WORDS = ("systemd kernel usb eth0 link up mounted started reached target network device "
         "journal session user slice socket timer service scope audit firmware").split()


def log_output(seed: int, count: int = LOG_LINES) -> bytes:
    """count lines of a coloured boot log, each ending in CR LF, the last one END."""
    rng = random.Random(seed)
    lines = []
    for number in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        if rng.random() < 0.5:
            status = rng.choice(COLOURS) + rng.choice([" OK ", "FAIL", "WARN"]) + "\x1b[0m"
            lines.append(f"[{status}] {words.capitalize()} {number}.")
        else:
            lines.append(f"[{number * 0.0137:12.6f}] {words}")
    lines[-1] = END
    return ("\r\n".join(lines) + "\r\n").encode()


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(count: int, viewer: bool) -> dict:
    """Build `count` consoles in this process, fill them, and report RSS and threads."""
    sys.path.insert(0, str(REPO))
    import console
    import display
    import render
    import sources

    font, _ = render.load_font(None)
    glyphs = render.Glyphs(font)
    masters, slaves, consoles, displays = [], [], [], []
    for _ in range(count):
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        term = console.Console(sources.PtySource(path), COLUMNS, LINES)
        displays.append(display.ConsoleDisplay(term, glyphs))
        term.start()
        masters.append(master)
        slaves.append(slave)
        consoles.append(term)
    for number, master in enumerate(masters):
        _write_all(master, log_output(number))
    deadline = time.monotonic() + TIMEOUT
    for number, term in enumerate(consoles):
        while not _shows(term, END) or term.terminal.history.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"console {number} never showed its last line, compacted")
            time.sleep(0.05)
    if viewer:
        for picture in displays:
            picture.listeners.add(_ignore)
            picture.changes(None)
            picture.listeners.discard(_ignore)
    gc.collect()
    time.sleep(SETTLE_SECONDS)  # the readers return their free memory after compacting
    result = {"consoles": count, "rss_kib": rss_kib(), "threads": _threads()}
    result.update(idle(IDLE_SECONDS))
    for term in consoles:
        term.stop()
    for fd in masters + slaves:
        os.close(fd)
    return result


def _ignore() -> None:
    pass


def _write_all(fd: int, data: bytes) -> None:
    """Write to a pty master as the reader drains the other end."""
    os.set_blocking(fd, True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:4096]):]


def _shows(term, text: str) -> bool:
    with term.lock:
        buffer = term.terminal.buffer
        return any(text in "".join(buffer[y][x].data for x in range(term.columns))
                   for y in range(term.lines))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def idle(seconds: float) -> dict:
    """What the other threads do in `seconds` of quiet: wake-ups (context switches) and CPU."""
    before, cpu = _switches(), _cpu_seconds()
    time.sleep(seconds)
    return {"idle_wakeups": _switches() - before, "idle_cpu_seconds": _cpu_seconds() - cpu}


def _switches() -> int:
    """Context switches of every thread but this one, which sleeps and wakes to measure."""
    me, total = str(threading.get_native_id()), 0
    for task in os.listdir("/proc/self/task"):
        if task != me:
            with open(f"/proc/self/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status
                             if "ctxt_switches:" in line)
    return total


def _cpu_seconds() -> float:
    """CPU time of the whole process."""
    times = os.times()
    return times.user + times.system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs=2, default=(1, 30), metavar=("FEW", "MANY"))
    parser.add_argument("--viewer", action="store_true",
                        help="render each console once for a viewer that then leaves")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.viewer)))
        return 0
    results = [measure_in_process(count, args.viewer) for count in args.counts]
    few, many = results
    per_console = (many["rss_kib"] - few["rss_kib"]) / (many["consoles"] - few["consoles"])
    for result in results:
        print(f"{result['consoles']:4d} consoles: RSS {result['rss_kib'] / 1024:7.1f} MiB, "
              f"{result['threads']} threads; idle {IDLE_SECONDS:.0f} s: "
              f"{result['idle_wakeups']} wake-ups, {result['idle_cpu_seconds']:.2f} s CPU")
    print(f"per extra console: {per_console / 1024:.2f} MiB")
    return 0


def measure_in_process(count: int, viewer: bool) -> dict:
    command = [sys.executable, __file__, "--one", str(count)] + (["--viewer"] if viewer else [])
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=TIMEOUT * 2).stdout
    return json.loads(output)


if __name__ == "__main__":
    sys.exit(main())
