"""Strangers for tests and for measuring: sockets that sit silent, and password guessers.

As a program it measures them against a real vncterm:

    python tests/strangers.py idle --attackers 4 --same-address --tries 80
    python tests/strangers.py idle --attackers 16 --tries 80
    python tests/strangers.py guess --attackers 1 --same-address --tries 10
    python tests/strangers.py guess --attackers 64 --seconds 30

It starts `vncterm.py --command cat` on a free loopback port (with a password for `guess`), runs
the attackers as threads on raw sockets, and, for `--tries`, runs vncdotool's `vncdo capture`
as the legitimate viewer from 127.0.0.1 one attempt after another, each with a time limit.
Attackers on other addresses bind 127.0.0.2 and up.  Idle attackers never send a byte and
reconnect as soon as vncterm closes them; guessers send one wrong password per connection and
reconnect as soon as they have the answer (16 zero bytes: no password's response, but checked
all the same).  It prints one line of results.  test_strangers.py uses `Attackers` with
vncdotool as the viewer.
"""

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VNCTERM = os.path.join(HERE, os.pardir, "vncterm.py")
VNCDO = os.path.join(os.path.dirname(sys.executable), "vncdo")
PASSWORD = "s3cret!x"


def recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@contextlib.contextmanager
def vncterm(program, password):
    """A real vncterm on a free port; yields the port."""
    with tempfile.TemporaryDirectory() as folder:
        argv = [sys.executable, program, "--command", "cat", "--port", "0"]
        if password:
            path = os.path.join(folder, "password")
            with open(path, "w") as file:
                file.write(password + "\n")
            os.chmod(path, 0o600)
            argv += ["--password-file", path]
        else:
            argv += ["--no-auth"]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        try:
            for line in process.stdout:
                found = re.search(r"listening on [\d.]+:(\d+)", line)
                if found:
                    break
            yield int(found.group(1))
        finally:
            process.terminate()
            process.wait(timeout=30)


class Attackers:
    """Threads that each hold one connection at a time until `stop` is set."""

    def __init__(self, count, same_address, port, attack):
        self.stop = threading.Event()
        self.answers = 0
        self.lock = threading.Lock()
        hosts = ["127.0.0.1" if same_address else f"127.0.{2 + n // 250}.{2 + n % 250}"
                 for n in range(count)]
        self.threads = [threading.Thread(target=self.run, args=(host, port, attack))
                        for host in hosts]

    def run(self, host, port, attack):
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1,
                                              source_address=(host, 0)) as sock:
                    if attack(sock, self.stop):
                        with self.lock:
                            self.answers += 1
            except OSError:
                time.sleep(0.01)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


def idle(sock, stop):
    """Never send a byte; return when vncterm closes the connection."""
    while not stop.is_set():
        try:
            if not sock.recv(4096):
                return False
        except TimeoutError:
            pass
    return False


def guess(sock, stop):
    """One wrong password; True once vncterm has answered it."""
    sock.settimeout(30)
    recv_exactly(sock, 12)
    sock.sendall(b"RFB 003.008\n")
    count = recv_exactly(sock, 1)[0]
    if count == 0 or 2 not in recv_exactly(sock, count):
        return False
    sock.sendall(b"\x02")
    recv_exactly(sock, 16)
    sock.sendall(bytes(16))
    recv_exactly(sock, 4)
    return True


def viewer(port, password, limit):
    """One vncdo capture from 127.0.0.1: (got in, seconds)."""
    started = time.monotonic()
    argv = [VNCDO, "-s", f"127.0.0.1::{port}", "--timeout", str(limit)]
    if password:
        argv += ["-p", password]
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run(argv + ["capture", os.path.join(folder, "x.png")],
                                  capture_output=True, timeout=limit + 5)
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
    return ok, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["idle", "guess"])
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--same-address", action="store_true")
    parser.add_argument("--tries", type=int, default=0, help="legitimate viewer attempts")
    parser.add_argument("--seconds", type=float, default=0, help="attack only, this long")
    parser.add_argument("--limit", type=float, default=15, help="seconds per viewer attempt")
    parser.add_argument("--vncterm", default=VNCTERM, help="the vncterm.py to run")
    args = parser.parse_args()
    password = PASSWORD if args.mode == "guess" else None
    attack = guess if args.mode == "guess" else idle
    with vncterm(args.vncterm, password) as port:
        with Attackers(args.attackers, args.same_address, port, attack) as attackers:
            time.sleep(1)
            started, answers = time.monotonic(), attackers.answers
            results = [viewer(port, password, args.limit) for _ in range(args.tries)]
            time.sleep(max(0, args.seconds - (time.monotonic() - started)))
            elapsed, answers = time.monotonic() - started, attackers.answers - answers
    got_in = [seconds for ok, seconds in results if ok]
    print(f"{args.mode}: {args.attackers} attackers "
          f"({'same address' if args.same_address else 'own addresses'}); "
          f"viewer got in {len(got_in)}/{len(results)}"
          + (f", slowest {max(got_in):.1f} s" if got_in else "")
          + f"; {answers} answered guesses in {elapsed:.0f} s ({answers / elapsed:.2f}/s)")


if __name__ == "__main__":
    main()
