"""hvm.py: an HVM guest's VGA screen through vncterm, and ten viewers on one busy desktop.

What.  Two workloads of issue 15, each measured through vncterm's proxy and, in the same run,
with the same viewers connected straight to the guest's own VNC server:

8. the VGA screen: QEMU (software emulation) boots the tests' busybox guest (tests/qemuguest.py)
   with a standard VGA card and its VNC server listening; vncterm dials it (`--desktop-connect`).
   A loop on the serial shell floods tty1, the VGA text console, with `dmesg`: updates/s and
   MB/s over a few seconds.  Then the screen is reset and keystrokes go to the shell on tty1:
   key echo, as in workload 1;
9. fan-out: ten viewers on one busy 1024x768 desktop (Xvnc animating two photographs, as in
   workload 5), each counting its updates for a few seconds, straight on Xvnc and through
   vncterm in turns: updates/s per viewer, and vncterm's CPU per viewer; medians.  QEMU's VGA has no
   1024x768 mode with this guest (the cloud kernel has no VESA or Bochs framebuffer driver), so
   the busy 1024x768 desktop is Xvnc, the server a PV guest's desktop runs.

How.  The viewers are client.Viewer: Raw, CopyRect and DesktopSize for the VGA screen (QEMU's
Tight may use the gradient filter, which the timing client does not decode), and the
benchmark's Tight set, parsed without decoding, for the fan-out.  CPU comes from /proc.

Trade-offs.  A TCG guest is slow and its screen changes at the guest's pace, so the VGA rows
compare the proxy with QEMU on the same flood rather than chase a fixed rate.
"""

from __future__ import annotations

import glob
import gzip
import importlib
import os
import re
import shutil
import subprocess
import threading
import time
import tty

from client import COPY_RECT, DESKTOP_SIZE, RAW, Viewer
from servers import COLUMNS, DESKTOP, OUT, ROWS, WORK, VncTerm, Xvnc, cpu_seconds, peers, wait_for

qemuguest = importlib.import_module("qemuguest")  # in tests/, which servers.py puts on the path

VGA_ENCODINGS = (RAW, COPY_RECT, DESKTOP_SIZE)
CONSOLE_SIZE = (COLUMNS * 8, ROWS * 16)
PTY_LINE = re.compile(r"char device redirected to (/dev/pts/\d+)")
FLOOD = "while :; do dmesg; done >/dev/tty1 2>&1 &\n"
FAN_OUT = 10


def initrd() -> str:
    """The tests' busybox initramfs (qemuguest.INIT), built into bench/work/."""
    root = WORK / "initramfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / "bin").mkdir(parents=True)
    shutil.copy(shutil.which("busybox"), root / "bin" / "busybox")
    (root / "init").write_text(qemuguest.INIT)
    (root / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc"], cwd=root, input=names,
                             capture_output=True, check=True).stdout
    path = WORK / "initrd.cpio.gz"
    path.write_bytes(gzip.compress(archive))
    return str(path)


class QemuVga:
    """QEMU booting the guest with a VGA card whose VNC server listens on .port; `serial()`
    types a line into the guest's serial shell."""

    def __init__(self) -> None:
        self.port = peers.free_port()
        kernel = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))[-1]
        self.log = open(OUT / "qemu.log", "w+")
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-no-reboot", "-nodefaults",
             "-kernel", kernel, "-initrd", initrd(), "-append", "console=ttyS0 panic=-1",
             "-vga", "std", "-vnc", f"127.0.0.1:{self.port - 5900}", "-display", "none",
             "-monitor", "none", "-chardev", "pty,id=c0", "-serial", "chardev:c0"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        path = wait_for(lambda: PTY_LINE.search((OUT / "qemu.log").read_text()), 30, "QEMU's pty")
        self.pty = os.open(path[1], os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.pty)
        self.output = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            wait_for(lambda: qemuguest.PROMPT.encode() in self.output, 90, "the guest's shell")
        except TimeoutError:
            self.stop()
            raise

    def _drain(self) -> None:
        """Read the serial console, answering busybox's cursor-position queries."""
        while True:
            try:
                data = os.read(self.pty, 4096)
            except OSError:
                return
            self.output += data
            if b"\x1b[6n" in data:
                os.write(self.pty, b"\x1b[1;1R")

    def serial(self, line: str) -> None:
        os.write(self.pty, line.encode())

    def stop(self) -> None:
        peers.stop_process(self.proc)
        os.close(self.pty)
        self.log.close()


def vga(repetitions: int, keystrokes: int, echo_latencies, throughput) -> dict:
    """QEMU's VGA text console flooded, straight and through vncterm; then key echo."""
    guest = QemuVga()
    try:
        return vga_through(guest, repetitions, keystrokes, echo_latencies, throughput)
    finally:
        guest.stop()


def vga_through(guest: QemuVga, repetitions: int, keystrokes: int, echo_latencies,
                throughput) -> dict:
    """The flood and key echo on a booted guest; `echo_latencies` and `throughput` are
    benchmark.py's measurements, handed in because benchmark.py imports this module."""
    server = VncTerm("cat", ("--desktop-connect", f"127.0.0.1:{guest.port}"))
    try:
        guest.serial(FLOOD)
        time.sleep(2)
        results = {"direct": [], "proxy": []}
        for _ in range(repetitions):
            results["direct"].append(throughput(direct_viewer(guest.port)))
            results["proxy"].append(throughput(proxy_viewer(server.port)))
        guest.serial("kill $!\n")
        time.sleep(1)
        guest.serial("printf '\\033c' >/dev/tty1\n")
        time.sleep(1)
        results["echo"] = {
            "direct": echo_latencies(direct_viewer(guest.port), keystrokes),
            "proxy": echo_latencies(proxy_viewer(server.port), keystrokes),
        }
        return results
    finally:
        server.stop()


def direct_viewer(port: int) -> Viewer:
    viewer = wait_for(lambda: try_viewer(port), 30, "QEMU's VNC server")
    viewer.request(False)
    viewer.next_update()
    return viewer


def proxy_viewer(port: int) -> Viewer:
    """A viewer of vncterm once it shows the guest's VGA screen, not the console."""
    def on_desktop():
        viewer = try_viewer(port)
        if viewer is not None and viewer.size != CONSOLE_SIZE:
            return viewer
        if viewer is not None:
            viewer.close()
        time.sleep(0.2)
        return None
    viewer = wait_for(on_desktop, 30, "the VGA screen in vncterm")
    viewer.request(False)
    viewer.next_update()
    return viewer


def try_viewer(port: int, encodings=VGA_ENCODINGS, decode: bool = True) -> Viewer | None:
    try:
        return Viewer(port, encodings, decode)
    except OSError:
        return None


def fan_out(repetitions: int, seconds: float = 5) -> dict:
    """Ten viewers on one busy 1024x768 Xvnc, straight and through vncterm, in turns."""
    xvnc = Xvnc(DESKTOP)
    animation = xvnc.start(["animate", "-window", "root", "-delay", "5",
                            "bench/work/photo-a.png", "bench/work/photo-b.png"], "animate")
    server = VncTerm("cat", ("--max-viewers", str(FAN_OUT + 4)))
    try:
        subprocess.run(["vncconfig", "-display", xvnc.display, "-connect",
                        f"127.0.0.1:{server.reverse_port}"], env=xvnc.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: desktop_up(server.port), 20, "the desktop in vncterm")
        results = {"direct": [], "proxy": []}
        for _ in range(repetitions):
            results["direct"].append(count_updates(
                [Viewer(xvnc.port, decode=False) for _ in range(FAN_OUT)], seconds))
            group = [Viewer(server.port, decode=False) for _ in range(FAN_OUT)]
            cpu = cpu_seconds(server.pids)
            proxy = count_updates(group, seconds)
            proxy["cpu_per_viewer"] = (cpu_seconds(server.pids) - cpu) / seconds / FAN_OUT
            results["proxy"].append(proxy)
        return results
    finally:
        server.stop()
        peers.stop_process(animation)
        xvnc.stop()


def desktop_up(port: int) -> bool:
    viewer = Viewer(port, decode=False)
    up = viewer.size == DESKTOP
    viewer.close()
    return up


def count_updates(viewers: list[Viewer], seconds: float) -> dict:
    """Each viewer takes updates for `seconds`; updates/s and MB/s per viewer, averaged."""
    for viewer in viewers:
        viewer.request(False)
        viewer.next_update()
    counts = []

    def take(viewer: Viewer) -> None:
        first, start = len(viewer.updates), viewer.consumed
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            viewer.next_update(max(0.01, deadline - time.perf_counter()))
        counts.append((len(viewer.updates) - first, viewer.consumed - start))
        viewer.close()

    threads = [threading.Thread(target=take, args=(viewer,)) for viewer in viewers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"updates_per_s": sum(n for n, _ in counts) / len(counts) / seconds,
            "mb_per_s": sum(b for _, b in counts) / len(counts) / seconds / 1e6}
