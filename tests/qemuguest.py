"""A real Linux guest for tests: Debian's cloud kernel under QEMU, its serial console on a pty.

The guest is the cloud kernel with a busybox initramfs built in a temporary folder (the
`initrd` fixture, once per module).  Its `/init` mounts /proc, /sys and /dev, silences the
kernel once the shell starts, and runs `sh` on the serial console with the prompt `guest# `,
and a second shell on tty1, the VGA console, which says `vga-ready` on the second serial port
(where the guest has one: `vga_options` gives it a VGA card and that port, written to a file).
QEMU (software emulation; there is no KVM here) puts the serial port on a pty and names it on
its monitor, the way xenconsoled names a guest's console, and `QemuGuest` reads that name.

A guest can also have a pointer, QEMU's virtio tablet (`TABLET`; the cloud kernel has no USB,
so no usb-tablet driver).  Its initramfs (`tablet_initrd`, built only for the tests that ask)
carries the booted kernel's virtio-input and evdev modules, in the order `modinfo` gives, and
its /init loads them and copies the tablet's events to the second serial port before saying
`tablet-ready` there.  The other guests' initramfs and /init are as they were.

Every guest starts paused (`-S`) and runs only on `cont()`, once vncterm has the pty open: QEMU
drops what a pty nobody has open would get, and the tests want the kernel's very first line.
A missing kernel skips the test (fails it under CI=true), as peers.require does.
"""

import glob
import gzip
import os
import re
import shutil
import subprocess
import threading

import peers

BOOT_TIMEOUT = 60
PROMPT = "guest# "
PTY_LINE = re.compile(r"char device redirected to (/dev/pts/\d+)")
INIT_HEAD = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s
dmesg -n 1
"""
INIT_TAIL = """export PS1='guest# '
setsid sh -c 'exec </dev/tty1 >/dev/tty1 2>&1
    { echo vga-ready >/dev/ttyS1; } 2>/dev/null; exec sh -i' &
exec setsid cttyhack sh
"""
INIT = INIT_HEAD + INIT_TAIL
# virtio-input's driver and evdev, for QEMU's `-device virtio-tablet-pci`; their dependencies
# come from modinfo.
TABLET_MODULES = ("virtio_pci", "virtio_input", "evdev")
TABLET = "-device", "virtio-tablet-pci"
# The tablet's event device, opened before tablet-ready is said (so no event is missed), copied
# to the second serial port as one struct input_event (24 bytes on x86-64) in hex a line.
TABLET_WATCH = """for event in /sys/class/input/event*; do
    grep -q Tablet $event/device/name && exec 3</dev/input/${event##*/}
done
hexdump -v -e '24/1 "%02x" "\\n"' <&3 >/dev/ttyS1 &
exec 3<&-
echo tablet-ready >/dev/ttyS1
"""


def kernel_version(kernel):
    """The version of a /boot/vmlinuz-VERSION kernel, as its modules' folder names it."""
    return os.path.basename(kernel).removeprefix("vmlinuz-")


def module_order(version, names):
    """The paths of modules `names` and of all they depend on, each after its dependencies."""
    order = []

    def add(name):
        def modinfo(*options):
            return subprocess.run(["modinfo", "-k", version, *options, name], check=True,
                                  capture_output=True, text=True).stdout.strip()
        for dependency in filter(None, modinfo("-F", "depends").split(",")):
            add(dependency)
        path = modinfo("-n")
        if path not in order:
            order.append(path)

    for name in names:
        add(name)
    return order


def tablet_init(modules):
    """INIT for a guest with a virtio tablet: it loads `modules` (file names in /lib/modules,
    dependencies first) and copies the tablet's events to the second serial port."""
    loads = "".join(f"insmod /lib/modules/{os.path.basename(module)}\n" for module in modules)
    return INIT_HEAD + loads + TABLET_WATCH + INIT_TAIL


def build_initramfs(root, init, modules=()):
    """A gzipped cpio archive beside folder `root` holding busybox, `init` and kernel
    `modules` (paths, copied to /lib/modules); returns its path."""
    (root / "bin").mkdir()
    shutil.copy(shutil.which("busybox"), root / "bin" / "busybox")
    if modules:
        (root / "lib" / "modules").mkdir(parents=True)
        for module in modules:
            shutil.copy(module, root / "lib" / "modules")
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc"], cwd=root, input=names,
                             capture_output=True, check=True).stdout
    path = root.parent / f"{root.name}.cpio.gz"
    path.write_bytes(gzip.compress(archive))
    return path


def require_kernel():
    """The cloud kernel's path; skipped (failed under CI=true) without one, as peers.require."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    peers.require("linux-image-cloud-amd64", kernels and os.access(kernels[-1], os.R_OK))
    return kernels[-1]


def vga_options(reverse_port, transcript):
    """QEMU options for a VGA card whose VNC server dials `reverse_port`, and a second serial
    port written to the file `transcript` (the guest's /dev/ttyS1)."""
    return ["-vga", "std", "-vnc", f"127.0.0.1:{reverse_port},reverse=on",
            "-chardev", f"file,id=c1,path={transcript}", "-serial", "chardev:c1"]


class QemuGuest:
    """A paused QEMU with its serial console on a new pty (.path); cont() lets it boot.
    `extra` options add devices (vga_options); `append` is the kernel's command line."""

    def __init__(self, kernel, initrd, log_path, extra=(), append="console=ttyS0 panic=-1"):
        self.lines = []
        self.named = threading.Event()
        self.log_path = log_path
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-no-reboot", "-nodefaults",
             "-kernel", kernel, "-initrd", str(initrd),
             "-append", append, "-display", "none", "-S",
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


def booted(raw, boots):
    """True once the raw console stream shows boot number `boots` reaching its prompt."""
    parts = peers.read_text(raw).split("Linux version")
    return len(parts) > boots and PROMPT in parts[boots]
