"""A real guest console: Linux booting under QEMU, reached the way a Xen dom0 reaches it.

The guest is Debian's cloud kernel with a busybox initramfs that the test builds in a temporary
folder. Its `/init` mounts /proc, /sys and /dev, silences the kernel once the shell starts, and
runs `sh` on the serial console with the prompt `guest# `, and a second shell on tty1, the VGA
console, for guests given a VGA card (test_qemu_desktop.py); that one says `vga-ready` on the
second serial port when it starts. QEMU (software emulation; there is no
KVM here) puts the serial port on a pty and names it on its monitor, the way xenconsoled names a
guest's console. The test writes that path to the fake xenstore as domain 7's `console/tty`.
From then on vncterm finds the console only through xenstore.

Every guest starts paused (`-S`), and the test lets it run (`cont` on QEMU's monitor) only once
vncterm has the pty open. QEMU drops what a pty nobody has open would get, and the point is to
see the kernel's very first line.

The first test drives `xen.DomainSource` in a `console.Console` and reads the terminal screen.
The second runs `vncterm.py --domain 7` with vncdotool as the viewer. It types a command that
paints coloured blocks and checks their pixels. Then it reboots the guest, with a new QEMU and a
new pty under the same key, and checks the blocks again. A boot takes about three seconds here.
"""

import glob
import gzip
import os
import re
import shutil
import subprocess
import threading

import pytest

import console
import keymap
import peers
import xen
from peers import Block
from test_xen import DOMAIN, PORT_KEY, TTY_KEY, FakeXen, VncTermDomain

BOOT_TIMEOUT = 60
PROMPT = "guest# "
PTY_LINE = re.compile(r"char device redirected to (/dev/pts/\d+)")
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s
dmesg -n 1
export PS1='guest# '
setsid sh -c 'exec </dev/tty1 >/dev/tty1 2>&1; echo vga-ready >/dev/ttyS1; exec sh -i' &
exec setsid cttyhack sh
"""
PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
REBOOTED = (Block("red", 40, 3), Block("green", 2, 22), Block("blue", 72, 1))


def require_kernel():
    """The cloud kernel's path; skipped (failed under CI=true) without one, as peers.require."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    peers.require("linux-image-cloud-amd64", kernels and os.access(kernels[-1], os.R_OK))
    return kernels[-1]


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    """A gzipped cpio initramfs holding busybox and INIT."""
    for program in ("qemu-system-x86_64", "busybox", "cpio"):
        peers.require(program)
    root = tmp_path_factory.mktemp("initramfs")
    (root / "bin").mkdir()
    shutil.copy(shutil.which("busybox"), root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc"], cwd=root, input=names,
                             capture_output=True, check=True).stdout
    path = root.parent / f"{root.name}.cpio.gz"
    path.write_bytes(gzip.compress(archive))
    return path


def vga_options(reverse_port, transcript):
    """QEMU options for a VGA card whose VNC server dials `reverse_port`, and a second serial
    port written to the file `transcript` (the guest's /dev/ttyS1)."""
    return ["-vga", "std", "-vnc", f"127.0.0.1:{reverse_port},reverse=on",
            "-chardev", f"file,id=c1,path={transcript}", "-serial", "chardev:c1"]


class QemuGuest:
    """A paused QEMU with its serial console on a new pty (.path); cont() lets it boot.

    With `extra` options (vga_options) it has a VGA screen too, its VNC server dialling a
    reverse port; INIT runs a second shell on tty1, the VGA console."""

    def __init__(self, kernel, initrd, log_path, extra=()):
        self.lines = []
        self.named = threading.Event()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-no-reboot", "-nodefaults",
             "-kernel", kernel, "-initrd", str(initrd),
             "-append", "console=ttyS0 panic=-1", "-display", "none", "-S",
             "-monitor", "stdio", "-chardev", "pty,id=c0", "-serial", "chardev:c0", *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read_output, daemon=True)
        self.reader.start()
        if not self.named.wait(30):
            self.stop()
            raise AssertionError(f"qemu named no pty:\n{''.join(self.lines)}")
        self.path = PTY_LINE.search("".join(self.lines))[1]

    def _read_output(self):
        """QEMU's monitor and messages; the pty's name comes through the monitor."""
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                if PTY_LINE.search(line):
                    self.named.set()

    def cont(self):
        self.proc.stdin.write("cont\n")
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def boot(initrd, artifacts):
    """boot() -> a paused QemuGuest; every guest is killed at teardown."""
    kernel = require_kernel()
    guests = []

    def start(extra=()):
        guests.append(QemuGuest(kernel, initrd, artifacts / f"qemu{len(guests)}.log", extra))
        return guests[-1]

    yield start
    for guest in guests:
        guest.stop()


def booted(raw, boots):
    """True once the raw console stream shows boot number `boots` reaching its prompt."""
    parts = peers.read_text(raw).split("Linux version")
    return len(parts) > boots and PROMPT in parts[boots]


def screen_lines(term):
    with term.lock:
        return list(term.terminal.display)


def type_line(term, text):
    """Type text and Return the way a viewer's key events arrive."""
    for character in text:
        term.key(ord(character), keymap.Modifiers())
    term.key(0xFF0D, keymap.Modifiers())


def answer_of(lines, command):
    """The line after the last prompt line that shows command, or None."""
    rows = [row for row, line in enumerate(lines) if line.rstrip().endswith(PROMPT + command)]
    if not rows or rows[-1] + 1 >= len(lines):
        return None
    return lines[rows[-1] + 1].rstrip()


def test_a_booting_guest_through_the_domain_source(boot, tmp_path):
    fake = FakeXen(tmp_path)
    guest = boot()
    fake.store.write(f"/local/domain/{DOMAIN}/name", "busybox")
    fake.store.write(TTY_KEY, guest.path)
    raw = tmp_path / "console.raw"
    with open(raw, "wb") as log_file:
        term = console.Console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)), 80, 25,
                               log_file=log_file)
        term.start()
        try:
            assert peers.wait_until(lambda: term.status == ""), term.status
            guest.cont()
            assert peers.wait_until(lambda: any(line.startswith(PROMPT)
                                                for line in screen_lines(term)), BOOT_TIMEOUT)
            assert b"Linux version" in raw.read_bytes()
            type_line(term, "echo $((6*7)) $(uname -s)")
            answer = peers.wait_until(lambda: answer_of(screen_lines(term),
                                                        "echo $((6*7)) $(uname -s)"))
            assert answer == "42 Linux", "\n".join(screen_lines(term))
        finally:
            term.stop()
            term.source.close()


def test_vncterm_domain_shows_a_real_guest_through_a_reboot(boot, artifacts, tmp_path):
    peers.require("vncdotool")
    fake = FakeXen(tmp_path)
    with VncTermDomain(fake, artifacts) as server:
        for boots, blocks in ((1, PATTERN), (2, REBOOTED)):
            boot_paint_and_reboot(server, boot, boots, blocks)
        server.stop()


def boot_paint_and_reboot(server, boot, boots, blocks):
    """Boot a guest under domain 7's key, paint blocks from a viewer, check them, reboot."""
    guest = boot()
    store = server.fake.store
    store.write(f"/local/domain/{DOMAIN}/name", "busybox")
    store.write(TTY_KEY, guest.path)
    assert peers.wait_until(lambda: store.read(PORT_KEY) == str(server.port)), server.report()
    guest.cont()
    raw = server.folder / "console.log"
    assert peers.wait_until(lambda: booted(raw, boots), BOOT_TIMEOUT), server.report()
    peers.vncdo(server, "type", peers.paint_command(blocks), "key", "enter")
    errors = peers.until_no_errors(lambda: peers.framebuffer_errors(
        peers.vncdo_capture(server, server.folder / f"boot{boots}.png"), blocks))
    assert not errors, "\n".join(errors)
    peers.vncdo(server, "type", "reboot -f", "key", "enter")
    assert guest.proc.wait(30) == 0
    assert peers.wait_until(lambda: store.read(PORT_KEY) is None), server.report()
