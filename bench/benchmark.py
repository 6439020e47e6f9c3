#!/usr/bin/env python3
"""bench/benchmark.py: vncterm side by side with TigerVNC's Xvnc running xterm, in one run.

What.  `make bench` runs every workload of issue 6 against vncterm and, in the same run,
against the peer a user would otherwise reach for: TigerVNC's `Xvnc` with one `xterm` of the
same 80x25 cells (xterm uses the 8x16 font, so both framebuffers are 640x400 pixels).  It
prints one table, each figure next to the peer's and their ratio, with the goal the issue
sets, and writes the table and every repetition as JSON to bench/results-TIME.json (and
bench/latest.json).  The workloads:

1. key echo: single keystrokes into `cat`, from KeyEvent sent to the first update whose pixels
   show the character;
2. floods: `seq 1 200000`, and a coloured `ls -lR` listing generated here, from Return to the
   settled final screen: time, bytes on the wire, updates, server CPU;
3. no viewer: server CPU while the console prints 20 MB, and the ingest rate;
4. bytes for one full screen of text per encoding;
5. the proxy: a busy guest desktop (an xterm flood, a full-screen image changing) seen through
   vncterm's reverse connection, against a viewer connected straight to the same Xvnc;
6. scale: 50 viewers of mixed encodings during a flood, against one viewer;
7. idle RSS;
8. a host: `--domain all` with 100 domains, against a process per domain (host.py).
9. an HVM guest's VGA screen (QEMU's own VNC server) through vncterm and straight, and
10. fan-out: ten viewers on one busy 1024x768 desktop through vncterm and straight (hvm.py).

How.  The servers are black boxes started as processes: vncterm through its command line
(`--command`, `--port 0`), the peer as `Xvnc -displayfd` plus `xterm -e`, both with the
starters the real-peer tests use (tests/peers.py: `VncTerm`, `Xvnc`), extended here only with
what is measured (process ids, the reverse port, the xterm).  Everything is measured from
outside.  Both servers are read by `client.Viewer`, the benchmark's own small RFB client,
which timestamps each update with the arrival of its last byte.  CPU and memory come from
/proc.  A flood has "settled" at the last update that changed a pixel, once the command has
finished (it touches a file) and the screen has stayed quiet; a second viewer then checks
that the picture is what the server sends anyone.  Keystrokes are measured one at a time:
type `x`, wait for it, rub it out with BackSpace, so that every keystroke starts from the
same picture.

The files: client.py (the timing viewer), servers.py (the two servers, their input files and
their processes' CPU and memory), host.py (the host of 100 domains), hvm.py (workloads 9
and 10), table.py (the printed table), and this one (the workloads and the command line).

Trade-offs.  Medians of a few repetitions, not a statistics package; the whole run takes a few
minutes.  Machines are noisy, so only figures from the same run are compared, and the goals
are judged on ratios where the issue states them that way.  The workloads are fixed: the
generated files use a fixed seed, and nothing here adapts to either server.  The 50 scale
viewers parse updates without decoding pixels (one Python process decoding 50 streams would
measure itself); their "final screen" is their last update.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import host
import hvm
from client import COMPRESS_2, COPY_RECT, HEXTILE, RAW, TIGHT, ZLIB, ZRLE, Viewer
from PIL import Image, ImageChops
from servers import (
    COLUMNS,
    DESKTOP,
    OUT,
    PEER,
    REPO,
    ROWS,
    WORK,
    VncTerm,
    Xvnc,
    connect,
    cpu_seconds,
    matches_fresh_viewer,
    memory_mb,
    peer_with_xterm,
    peers,
    wait_cpu,
    wait_for,
    write_workloads,
)
from table import build_table

ENCODING_NAMES = {TIGHT: "Tight", ZRLE: "ZRLE", HEXTILE: "Hextile", ZLIB: "Zlib", RAW: "Raw"}
KEY_X, BACKSPACE, RETURN, F1, F7 = ord("x"), 0xFF08, 0xFF0D, 0xFFBE, 0xFFC4


# --- Workloads -----------------------------------------------------------------------------------


def start(kind: str, command: str, options=()):
    """vncterm or the peer, serving a console that runs `command`."""
    if kind == "vncterm":
        return VncTerm(command, options)
    return peer_with_xterm(command)


def key_echo(kind: str, keystrokes: int) -> dict:
    """Milliseconds from KeyEvent to the first update showing the character, typed into cat."""
    server = start(kind, "cat")
    try:
        return echo_latencies(connect(server), keystrokes)
    finally:
        server.stop()


def echo_latencies(viewer: Viewer, keystrokes: int) -> dict:
    """Type x, time it, rub it out; p50, p90 and max in milliseconds."""
    viewer.settle()
    empty = viewer.image.copy()
    viewer.key(KEY_X)
    viewer.settle()
    typed = viewer.image.copy()
    left, top, right, bottom = ImageChops.difference(empty, typed).getbbox()
    cell = (left, top, (left + right) // 2, bottom)  # the character; the cursor moved right
    latencies = []
    for _ in range(keystrokes):
        viewer.key(BACKSPACE)
        take_until(viewer, empty)
        time.sleep(0.005)
        sent = time.perf_counter()
        viewer.key(KEY_X)
        shown = take_until(viewer, typed, cell)
        take_until(viewer, typed)
        latencies.append((shown - sent) * 1000)
    latencies.sort()
    return {"p50": statistics.median(latencies), "p90": latencies[int(0.9 * len(latencies))],
            "max": latencies[-1], "count": len(latencies)}


def take_until(viewer: Viewer, picture: Image.Image, box=None) -> float:
    """Take updates until the viewer shows `picture` (within `box`); return when it did."""
    box = box or (0, 0, *picture.size)
    wanted = picture.crop(box).tobytes()
    arrived = time.perf_counter()
    while viewer.image.crop(box).tobytes() != wanted:
        update = viewer.next_update(5)
        if update is None:
            raise TimeoutError("the expected picture never came")
        arrived = update.time
    return arrived


def floods(kind: str, repetitions: int) -> dict:
    """Each flood script `repetitions` times on one console, with one viewer."""
    server = start(kind, "sh")
    results = {"seq": [], "listing": []}
    try:
        viewer = connect(server)
        viewer.settle()
        for _ in range(repetitions):
            for script in results:
                results[script].append(flood(server, viewer, script))
    finally:
        server.stop()
    return results


def flood(server, viewer: Viewer, script: str) -> dict:
    """Return to the settled final screen: seconds, bytes, updates, server CPU seconds."""
    done = WORK / "done"
    done.unlink(missing_ok=True)
    viewer.type(f"sh bench/work/{script}.sh")
    viewer.settle()
    first, cpu = len(viewer.updates), cpu_seconds(server.pids)
    start_bytes = viewer.consumed
    sent = time.perf_counter()
    viewer.key(RETURN)
    wait_until_done(viewer, done)
    cpu = cpu_seconds(server.pids) - cpu
    updates = viewer.updates[first:]
    last = max((i for i, u in enumerate(updates) if u.changed), default=len(updates) - 1)
    return {"seconds": updates[last].time - sent, "bytes": updates[last].end - start_bytes,
            "updates": last + 1, "cpu": cpu, "verified": matches_fresh_viewer(server, viewer)}


def wait_until_done(viewer: Viewer, done: Path, quiet: float = 0.5, limit: float = 120) -> None:
    """Take updates until the script has touched `done` and the screen stayed quiet."""
    deadline = time.monotonic() + limit
    while not done.exists():
        viewer.next_update(0.05)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} never appeared")
    viewer.settle(quiet)


def no_viewer(kind: str) -> dict:
    """CPU seconds and MB/s while the console prints 20 MB with nobody watching."""
    stamp = WORK / "started"
    stamp.unlink(missing_ok=True)
    command = f"date +%s.%N > {stamp}; exec cat bench/work/plain.txt"
    size = (WORK / "plain.txt").stat().st_size
    if kind == "vncterm":
        server = VncTerm(f"sh -c '{command}'")
        cpu = server.wait_exit()
        ended = time.time()
    else:
        server = Xvnc()
        xvnc_cpu = cpu_seconds(server.pids)
        cpu = wait_cpu(server.xterm(command, keep_pid=False))
        ended = time.time()
        cpu += cpu_seconds(server.pids) - xvnc_cpu
    server.stop()
    seconds = ended - float(stamp.read_text())
    return {"cpu": cpu, "seconds": seconds, "mb_per_s": size / seconds / 1e6}


def screen_bytes(kind: str) -> dict:
    """Bytes of one full-screen update of typical text for a new viewer, per encoding.

    At compression level 2 (what TigerVNC's viewer and noVNC ask for), and for Tight and ZRLE
    also at the server's default level.  An encoding the server lacks is recorded as None.
    """
    server = start(kind, "sh -c 'cat bench/work/screen.txt; exec cat'")
    cases = [(name, (encoding, COMPRESS_2)) for encoding, name in ENCODING_NAMES.items()]
    cases += [(f"{ENCODING_NAMES[encoding]}, default level", (encoding,))
              for encoding in (TIGHT, ZRLE)]
    try:
        settle_console(server)
        sizes = {}
        for name, encodings in cases:
            viewer = Viewer(server.port, encodings, decode=False)
            viewer.request(False)
            size = viewer.next_update().size
            sizes[name] = size if viewer.seen_encodings == {encodings[0]} else None
            viewer.close()
        return sizes
    finally:
        server.stop()


def settle_console(server) -> None:
    """Wait until the console shows its first screen and stays quiet."""
    viewer = connect(server)
    viewer.settle(0.5)
    viewer.close()


def idle_rss(kind: str) -> dict:
    """Resident memory of the server two seconds after it started a shell."""
    server = start(kind, "sh")
    try:
        time.sleep(2)
        return {"rss": memory_mb(server.pids)}
    finally:
        server.stop()


def scale(kind: str, viewers: int) -> dict:
    """The seq flood with `viewers` viewers of mixed encodings: when all have the final screen."""
    options = ("--max-viewers", str(viewers + 8))
    server = start(kind, "sh", options)
    mix = [TIGHT, ZRLE, HEXTILE, ZLIB, RAW]
    try:
        settle_console(server)
        group = [connect(server, (mix[n % len(mix)], COPY_RECT, COMPRESS_2), decode=False)
                 for n in range(viewers)]
        readers = [Reader(viewer) for viewer in group]
        done = WORK / "done"
        done.unlink(missing_ok=True)
        group[0].type("sh bench/work/seq.sh")
        time.sleep(1)
        sent = time.perf_counter()
        group[0].key(RETURN)
        wait_for(done.exists, 120, "the flood to finish")
        wait_for(lambda: all(reader.quiet_for(0.5) for reader in readers), 120, "quiet")
        for reader in readers:
            reader.stop()
        return {"seconds": max(reader.last - sent for reader in readers),
                "peak_rss": memory_mb(server.pids, "VmHWM")}
    finally:
        server.stop()


class Reader:
    """A thread taking one viewer's updates and noting when the last one arrived."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.last = time.perf_counter()
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            if self.viewer.next_update(0.1) is not None:
                self.last = time.perf_counter()

    def quiet_for(self, seconds: float) -> bool:
        return time.perf_counter() - self.last > seconds

    def stop(self) -> None:
        self.running = False
        self.thread.join()
        self.viewer.close()


def proxy(repetitions: int, keystrokes: int) -> dict:
    """A busy desktop in Xvnc, through vncterm's proxy and straight: updates/s, MB/s, echo."""
    xvnc = Xvnc(DESKTOP)
    results = {}
    try:
        busy = {
            "xterm flood": lambda: xvnc.xterm("sh bench/work/flood.sh", keep_pid=False),
            "image": lambda: xvnc.start(["animate", "-window", "root", "-delay", "5",
                                         "bench/work/photo-a.png", "bench/work/photo-b.png"],
                                        "animate"),
        }
        for name, begin in busy.items():
            program = begin()
            time.sleep(2)
            results[name] = {"direct": [], "proxy": []}
            for _ in range(repetitions):
                results[name]["direct"].append(throughput(Viewer(xvnc.port)))
                results[name]["proxy"].append(through_proxy(xvnc, throughput))
            peers.stop_process(program)
        xterm = xvnc.xterm("cat", keep_pid=False)
        time.sleep(1)
        results["echo"] = {
            "direct": echo_latencies(connect(xvnc), keystrokes),
            "proxy": through_proxy(xvnc, lambda viewer: echo_latencies(viewer, keystrokes)),
        }
        results["switch"] = through_proxy(xvnc, switch_times)
        peers.stop_process(xterm)
    finally:
        xvnc.stop()
    return results


def throughput(viewer: Viewer, seconds: float = 3) -> dict:
    """Updates and bytes per second for `seconds`, after the first full update."""
    viewer.request(False)
    viewer.next_update()
    first, start_bytes = len(viewer.updates), viewer.consumed
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        viewer.next_update(seconds)
    elapsed = time.perf_counter() - started
    viewer.close()
    return {"updates_per_s": (len(viewer.updates) - first) / elapsed,
            "mb_per_s": (viewer.consumed - start_bytes) / elapsed / 1e6}


def switch_times(viewer: Viewer, rounds: int = 20) -> dict:
    """Milliseconds from a VT-switch hotkey to the first update with the other display's
    pixels: Ctrl-Alt-F1 to the console, Ctrl-Alt-F7 back to the desktop; medians."""
    times = {"to console": [], "to desktop": []}
    console_size = (COLUMNS * 8, ROWS * 16)
    for _ in range(rounds):
        for name, keysym, size in (("to console", F1, console_size), ("to desktop", F7, DESKTOP)):
            sent = time.perf_counter()
            viewer.hotkey(keysym)
            update = viewer.next_update()
            while viewer.size != size or viewer.image.getbbox() is None:
                update = viewer.next_update()
            times[name].append((update.time - sent) * 1000)
            viewer.settle(0.2)
    return {name: statistics.median(values) for name, values in times.items()}


def through_proxy(xvnc: Xvnc, measure):
    """`measure(viewer)` with a viewer of a fresh vncterm whose guest desktop is this Xvnc."""
    server = VncTerm("cat")
    try:
        subprocess.run(["vncconfig", "-display", xvnc.display, "-connect",
                        f"127.0.0.1:{server.reverse_port}"], env=xvnc.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        viewer = wait_for(lambda: desktop_viewer(server.port), 20, "the desktop in vncterm")
        viewer.pointer(COLUMNS * 4, ROWS * 8)
        viewer.request(False)
        viewer.next_update()
        return measure(viewer)
    finally:
        server.stop()


def desktop_viewer(port: int) -> Viewer | None:
    """A viewer of vncterm once it shows the guest desktop, else None."""
    viewer = Viewer(port)
    if viewer.size == DESKTOP:
        return viewer
    viewer.close()
    time.sleep(0.2)
    return None


# --- Main ----------------------------------------------------------------------------------------


def run(workloads, args) -> dict:
    """Every workload asked for, on vncterm and then on the peer; the proxy last."""
    results = {}
    for kind in ("vncterm", PEER):
        for name, measure in SERVER_WORKLOADS.items():
            if name in workloads:
                report(f"{kind}: {name}")
                results.setdefault(name, {})[kind] = measure(kind, args)
    if "proxy" in workloads:
        report("proxy")
        results["proxy"] = proxy(max(1, args.repetitions - 1), args.keystrokes // 4)
    if "host" in workloads:
        report(f"host of {host.DOMAINS} domains")
        results["host"] = host.host_row(WORK / "host")
    if "hvm" in workloads:
        report("hvm: QEMU's VGA screen, then fan-out")
        results["hvm"] = {
            "vga": hvm.vga(max(1, args.repetitions - 1), args.keystrokes // 4, echo_latencies,
                           throughput),
            "fan_out": hvm.fan_out(args.repetitions)}
    return results


SERVER_WORKLOADS = {
    "idle": lambda kind, args: idle_rss(kind),
    "screen": lambda kind, args: screen_bytes(kind),
    "echo": lambda kind, args: key_echo(kind, args.keystrokes),
    "floods": lambda kind, args: floods(kind, args.repetitions),
    "no_viewer": lambda kind, args: [no_viewer(kind) for _ in range(args.repetitions)],
    "scale": lambda kind, args: {
        "many": [scale(kind, args.viewers) for _ in range(max(1, args.repetitions - 1))],
        "one": [scale(kind, 1) for _ in range(max(1, args.repetitions - 1))]},
}
WORKLOADS = (*SERVER_WORKLOADS, "proxy", "host", "hvm")


def report(text: str) -> None:
    """Progress, on stderr."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def versions() -> dict:
    """What ran, for the JSON record."""
    def first_line(argv):
        """The first two lines a program prints about itself."""
        result = subprocess.run(argv, capture_output=True, text=True)
        return (result.stdout + result.stderr).strip().splitlines()[0:2]
    return {"python": sys.version.split()[0], "cpus": os.cpu_count(),
            "Xvnc": " ".join(first_line(["Xvnc", "-version"])),
            "xterm": " ".join(first_line(["xterm", "-version"]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=WORKLOADS,
                        help="run only this workload (repeatable)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs per flood (3)")
    parser.add_argument("--keystrokes", type=int, default=200, help="keys per echo run (200)")
    parser.add_argument("--viewers", type=int, default=50, help="viewers for scale (50)")
    args = parser.parse_args(argv)
    tools = ("Xvnc", "xterm", "vncconfig", "animate")
    if "hvm" in (args.only or WORKLOADS):
        tools += ("qemu-system-x86_64", "busybox", "cpio")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"benchmark: missing {', '.join(missing)}; `make bench` installs them",
              file=sys.stderr)
        return 2
    os.chdir(REPO)  # the workload scripts and the shells name their files from the checkout
    OUT.mkdir(exist_ok=True)
    report("writing the workload files")
    write_workloads()
    started = time.time()
    results = run(args.only or WORKLOADS, args)
    table = build_table(results)
    print(table.text())
    record = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": time.time() - started,
              "command": " ".join(sys.argv), "versions": versions(), "table": table.rows,
              "results": results}
    name = OUT / time.strftime("results-%Y%m%d-%H%M%S.json")
    for path in (name, OUT / "latest.json"):
        path.write_text(json.dumps(record, indent=1, default=str))
    print(f"\nwritten to {name.relative_to(REPO)} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
