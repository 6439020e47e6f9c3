"""host.py: `vncterm --domain all` with 100 domains, against a process per domain.

What.  The memory and threads of one vncterm serving a host of 100 guest domains, each console
with a full scrollback (1,200 lines of coloured boot log, more than the 1,000 kept), and the
time from a domain's introduction in xenstore to a port that accepts viewers.  Beside them:
100 separate `vncterm --domain N` processes, the way a host was served before, and Proxmox's
C vncterm at 6.8 MB per console (a stated reference figure, not measured here).

How.  The host is tests/fakexenstore.py's store, with a pty per guest as xenconsoled would make
it, and vncterm is started on it as `--domain all`.  The same vncterm is measured twice: with
one domain, then with all 100, so that (RSS with 100 - RSS with 1) / 99 is what a domain adds;
then its CPU time over 10 idle seconds (no output, no viewer).
The introduction time is taken for domains created one at a time after the others: from the
store write to the first successful TCP connect to the domain's port (the fake's watch polls
the store every 20 ms, and its tools are Python processes, so a real xenstored answers sooner).
A process per domain is measured on one such process with a full console, and multiplied:
running 100 of them at once on a benchmark machine measures the machine's swap.  vncterm's own
process is counted, not the fake xenstore-watch processes (real ones are a few hundred kB).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from servers import OUT, REPO, cpu_seconds, memory_mb, peers, wait_for

import fakexenstore

DOMAINS = 100
LOG_LINES = 1200
TIMED_DOMAINS = 5
PROXMOX_MB = 6.8
IDLE_SECONDS = 10
SERVED = re.compile(r"vncterm: domain (\d+) on [\d.]+:(\d+)")


def boot_log(number: int) -> bytes:
    """1,200 lines of a coloured boot log, different for each domain."""
    chooser = random.Random(number)
    lines = []
    for line in range(LOG_LINES):
        state = chooser.choice(("\033[32m  OK  \033[0m", "\033[33m WARN \033[0m"))
        unit = chooser.choice(("systemd-udevd", "networking", "ssh", "cron", "rsyslog"))
        lines.append(f"[{line * 0.013:9.4f}] [{state}] domain {number}: started {unit}.service")
    return ("\r\n".join(lines) + "\r\n").encode()


class FakeHost:
    """The fake xenstore and a pty per guest; write() gives a guest's console its output."""

    def __init__(self, folder: Path) -> None:
        self.store = fakexenstore.Store(folder / "xenstore.json")
        self.prefix = fakexenstore.install(folder / "bin", self.store.path)
        self.masters = {}

    def create(self, number: int) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        os.close(slave)
        self.masters[number] = master
        self.store.write(f"/local/domain/{number}/name", f"guest-{number}")
        self.store.write(f"/local/domain/{number}/console/tty", path)

    def say(self, numbers) -> None:
        """Each domain's boot log, written by a thread per domain (a pty holds only a few kB)."""
        writers = [threading.Thread(target=write_all, args=(self.masters[n], boot_log(n)))
                   for n in numbers]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()

    def close(self) -> None:
        for master in self.masters.values():
            os.close(master)


def write_all(fd: int, data: bytes) -> None:
    """A pty master takes what fits in its buffer and says how much: write the rest too."""
    while data:
        data = data[os.write(fd, data):]


def free_base(count: int) -> int:
    for base in range(10000, 30000, 1009):  # below the ephemeral ports (32768 up)
        try:
            for port in range(base, base + count + 1):
                socket.create_server(("127.0.0.1", port)).close()
                socket.create_server(("127.0.0.1", port + 2000)).close()
        except OSError:
            continue
        return base
    raise RuntimeError("no free range of ports")


def vncterm(fake: FakeHost, domain: str, port: int) -> subprocess.Popen:
    """`--domain all` with `port` as the base, or `--domain N` on `port` itself."""
    argv = [sys.executable, "vncterm.py", "--domain", domain, "--port", str(port),
            "--reverse-port", str(port + 2000), "--xenstore-prefix", fake.prefix]
    log = open(OUT / "host.log", "ab")
    return subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, text=True)


def served(process: subprocess.Popen) -> set[int]:
    """A set that a thread fills with each domain id vncterm says it serves."""
    numbers = set()

    def read():
        for line in process.stdout:
            if match := SERVED.match(line):
                numbers.add(int(match[1]))
    threading.Thread(target=read, daemon=True).start()
    return numbers


def threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def settled_rss(pid: int, seconds: float = 3.0) -> float:
    """RSS once the consoles have taken in their output (it stops moving)."""
    before = memory_mb([pid])
    while True:
        time.sleep(seconds)
        now = memory_mb([pid])
        if abs(now - before) < 0.5:
            return now
        before = now


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    peers.stop_process(process, timeout=30)


def host_row(folder: Path) -> dict:
    """Memory, threads and introduction times of --domain all, and of a process per domain."""
    shutil.rmtree(folder, ignore_errors=True)  # a fresh store: no domains from a past run
    folder.mkdir(parents=True)
    fake = FakeHost(folder)
    base = free_base(DOMAINS + TIMED_DOMAINS + 1)
    started = []
    try:
        started.append(vncterm(fake, "all", base))
        result = whole_host(fake, started[-1], base)
        stop(started[-1])
        print(f"bench: --domain all: {result}", file=sys.stderr, flush=True)
        started.append(vncterm(fake, "1", base + 1))
        wait_for(lambda: accepts(base + 1), 60, "vncterm --domain 1")
        fake.say([1])
        result["one_process"] = settled_rss(started[-1].pid)
        result["one_process_threads"] = threads(started[-1].pid)
        return result
    finally:
        for process in started:
            stop(process)
        fake.close()


def whole_host(fake: FakeHost, process: subprocess.Popen, base: int) -> dict:
    """RSS with one domain and with all, threads, children, and introduction times."""
    fake.create(1)
    numbers = served(process)
    wait_for(lambda: 1 in numbers, 60, "domain 1 served")
    fake.say([1])
    one = settled_rss(process.pid)
    for number in range(2, DOMAINS + 1):
        fake.create(number)
    wait_for(lambda: len(numbers) == DOMAINS, 300, f"{DOMAINS} domains served")
    fake.say(range(2, DOMAINS + 1))
    many = settled_rss(process.pid)
    idle_cpu = cpu_seconds([process.pid])
    time.sleep(IDLE_SECONDS)
    idle_cpu = (cpu_seconds([process.pid]) - idle_cpu) / IDLE_SECONDS
    introduce = []
    for number in range(DOMAINS + 1, DOMAINS + TIMED_DOMAINS + 1):
        created = time.monotonic()
        fake.create(number)
        wait_for(lambda number=number: accepts(base + number), 30, f"domain {number}")
        introduce.append(time.monotonic() - created)
    children = [line for line in subprocess.run(
        ["ps", "--ppid", str(process.pid), "-ww", "-o", "args="], capture_output=True,
        text=True).stdout.splitlines() if " watch " in line]  # not a publish's short-lived run
    return {"rss_1": one, "rss_all": many, "per_domain": (many - one) / (DOMAINS - 1),
            "threads": threads(process.pid), "introduce": introduce, "watches": len(children),
            "idle_cpu": idle_cpu}
