"""A real guest console: Linux booting under QEMU, reached the way a Xen dom0 reaches it.

The guest is Debian's cloud kernel with a busybox initramfs that the test builds in a temporary
folder. Its `/init` mounts /proc, /sys and /dev, silences the kernel once the shell starts, and
runs `sh` on the serial console with the prompt `guest# `. QEMU (software emulation; there is no
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

import console
import keymap
import peers
import xen
from fakexen import DOMAIN, PORT_KEY, TTY_KEY, FakeXen, VncTermDomain
from peers import Block
from qemuguest import BOOT_TIMEOUT, PROMPT, booted

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
REBOOTED = (Block("red", 40, 3), Block("green", 2, 22), Block("blue", 72, 1))


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
