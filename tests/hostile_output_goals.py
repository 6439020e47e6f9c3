"""Measure issue 12's goals for hostile console output against a real vncterm (not a test).

    python3 tests/hostile_output_goals.py [--repo DIR]

1. Key to full update during a burst.  The console runs a program that prints, without end,
   60 KB of DECALN (`ESC # 8`) and then 80 KB of combining accents.  In between, each key it
   reads turns the background red or green and clears the screen.  A viewer (rawviewer.Client,
   Raw) presses r, g, r, ... and times each key until its screen is mostly that colour.
   Goal: at most 1 s.
2. SIGTERM during that burst: the time until vncterm has exited.  Goal: at most 3 s.
3. A program that floods terminal queries (`ESC [ 6 n`, `ESC [ c`) and never reads its input,
   for 10 s: the size of vncterm's --log-file.  Goal: under 1 MB.

--repo runs another checkout's vncterm.py (e.g. one before the fix) with the same viewer.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import rawviewer

HERE = Path(__file__).resolve().parent
LISTENING = re.compile(rb"vncterm: listening on 127\.0\.0\.1:(\d+)")
KEY_DEADLINE = 60.0

BURST = r"""
import os, sys, threading, tty
tty.setraw(0)
lock = threading.Lock()
burst = [b"\x1b#8" * 20000, ("e" + "\u0301" * 40000).encode()]

def flood():
    while True:
        for part in burst:
            for start in range(0, len(part), 3000):
                with lock:
                    os.write(1, part[start:start + 3000])

threading.Thread(target=flood, daemon=True).start()
while True:
    key = os.read(0, 1)
    with lock:
        os.write(1, {b"r": b"\x1b[0;41m\x1b[2J", b"g": b"\x1b[0;42m\x1b[2J"}.get(key, b""))
"""

QUERIES = r"""
import os
while True:
    os.write(1, b"\x1b[6n\x1b[c" * 1000)
"""


def start_vncterm(repo, script, *options):
    """A vncterm.py running `python3 script` in repo; (process, port)."""
    argv = [sys.executable, "vncterm.py", "--port", "0", "--reverse-port", "0", *options,
            "--command", f"{sys.executable} {script}"]
    process = subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    for line in process.stdout:
        match = LISTENING.search(line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(match[1])
    raise SystemExit(f"vncterm in {repo} did not start")


def share(image, colour):
    """The share of the image's pixels that are mostly `colour` ("r" or "g")."""
    channel = "rg".index(colour)
    data = image.convert("RGB").resize((80, 50)).tobytes()
    pixels = [data[start : start + 3] for start in range(0, len(data), 3)]
    return sum(1 for pixel in pixels
               if pixel[channel] > 100 and max(pixel[c] for c in range(3) if c != channel) < 80
               ) / len(pixels)


def key_latencies(port, keys):
    """Seconds from each key press to the first update after which the screen shows it."""
    viewer = rawviewer.Client(port, timeout=KEY_DEADLINE)
    viewer.request(incremental=False)
    viewer.read_update()
    latencies = []
    try:
        for number in range(keys):
            colour = "rg"[number % 2]
            pressed = time.monotonic()
            viewer.key(ord(colour))
            viewer.key(ord(colour), down=False)
            while share(viewer.image, colour) < 0.5:
                if time.monotonic() - pressed > KEY_DEADLINE:
                    raise TimeoutError
                viewer.request()
                viewer.read_update()
            latencies.append(time.monotonic() - pressed)
            time.sleep(0.2)
    finally:
        viewer.close()
    return latencies


def stop_time(process):
    """Seconds from SIGTERM until the process exited (killed after 120 s)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(HERE.parent), help="the checkout to run")
    parser.add_argument("--keys", type=int, default=12, help="keys to time (12)")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        burst, queries = Path(folder, "burst.py"), Path(folder, "queries.py")
        burst.write_text(BURST)
        queries.write_text(QUERIES)

        process, port = start_vncterm(args.repo, burst)
        time.sleep(1.0)  # let the burst get going
        try:
            latencies = key_latencies(port, args.keys)
            print(f"key to full update during the burst: max {max(latencies):.3f} s, "
                  f"median {statistics.median(latencies):.3f} s over {len(latencies)} keys")
        except TimeoutError:
            print(f"key to full update during the burst: none within {KEY_DEADLINE:.0f} s")
        print(f"SIGTERM during the burst: exited after {stop_time(process):.2f} s, "
              f"status {process.returncode}")

        log = Path(folder, "vncterm.log")
        process, _ = start_vncterm(args.repo, queries, "--log-file", str(log))
        time.sleep(args.flood_seconds)
        stop_time(process)
        print(f"log after {args.flood_seconds:.0f} s of unread terminal queries: "
              f"{os.path.getsize(log)} bytes")


if __name__ == "__main__":
    main()
