"""An HVM domain behind one port: its first serial port as the console, its device model's VGA
screen as the desktop.

An HVM guest has no xenconsoled console. Its device model, QEMU, emulates a serial port on a pty
and names it at `serial/0/tty`, and serves the VGA card over VNC at the address it writes to
`console/vnc-port` (and `console/vnc-listen`). The first half of this file drives `xen.py`
through the fake xenstore with a pty pair standing in for the serial port: which key is the
console, which keys vncterm writes and which it leaves alone, and where it dials.

The second half is the real device model. QEMU (TCG) boots the small Linux guest of
test_guest.py with a standard VGA card and a VNC server, its serial port on a pty, and the test
writes the keys QEMU would write under Xen. `vncterm.py --domain 7` then finds both through
the fake xenstore alone. A vncdotool viewer presses Ctrl-Alt-F1 and types into the serial
shell a command that paints tty1 red. Another, staying connected, starts on the VGA screen (a
viewer starts on the desktop when there is one) and sees it red; Ctrl-Alt-F1 shows the serial
console, Ctrl-Alt-F7 the red VGA screen again. Killing QEMU returns the viewer to the console,
and a new QEMU on another pty and another port brings the VGA screen back. The same runs with
vncterm as `nobody`; a QEMU asking for a VNC password is dialled with --desktop-password-file.
The guest also reaches vncterm the other way, with QEMU's `-vnc ...,reverse=on`, seen in
TigerVNC's vncviewer.
"""


import os
import re

import pytest

import keymap
import peers
import roothelper
import xen
from fakexen import (
    DOMAIN,
    DOMAIN_PATH,
    PORT_KEY,
    TTY_KEY,
    VncTermDomain,
    desktop_address,
    shows,
    status_is,
)
from guestdesktop import hotkey, near, settle, vncdo_capture
from peers import TigerViewer
from qemuguest import BOOT_TIMEOUT, QemuGuest, booted, require_kernel

SERIAL_KEY = f"{DOMAIN_PATH}/serial/0/tty"
LISTEN_KEY = f"{DOMAIN_PATH}/console/vnc-listen"
VNCTERM_PORT_KEY = f"{DOMAIN_PATH}/console/vncterm-port"
REVERSE_KEY = f"{DOMAIN_PATH}/console/vnc-reverse"


def start_hvm_domain(fake, serial, vnc_port=None):
    """What libxl and QEMU write for an HVM domain: no console/tty, a serial port, a display."""
    fake.store.write(f"{DOMAIN_PATH}/name", "hvm")
    fake.store.write(SERIAL_KEY, serial)
    if vnc_port is not None:
        fake.store.write(PORT_KEY, str(vnc_port))


# --- xen.py with the fake xenstore ----------------------------------------------------------


def test_an_hvm_domains_console_is_its_first_serial_port(fake, guests, run_console):
    serial = guests()
    start_hvm_domain(fake, serial.path, 5901)
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert status_is(term, "") == ""
    serial.say(b"SeaBIOS (version 1.16)\r\n")
    assert shows(term, "SeaBIOS (version 1.16)")
    term.key(ord("x"), keymap.Modifiers())
    assert serial.heard(1) == b"x"


def test_console_tty_wins_over_the_serial_port(fake, guests):
    pv, serial = guests(), guests()
    start_hvm_domain(fake, serial.path)
    domain = xen.Domain(DOMAIN, fake.xenstore)
    assert domain.console_path() == serial.path
    fake.store.write(TTY_KEY, pv.path)
    assert domain.console_path() == pv.path


def test_no_console_key_says_which_keys_it_waits_for(fake, run_console):
    fake.store.write(f"{DOMAIN_PATH}/name", "hvm")
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert "no console/tty or serial/0/tty" in status_is(term, "serial/0/tty")


def test_the_serial_key_is_held_to_the_same_pty_rule(fake, run_console):
    start_hvm_domain(fake, "/etc/shadow")
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert "refused tty '/etc/shadow'" in status_is(term, "refused")


def test_the_device_models_vnc_port_is_never_overwritten(fake, guests):
    serial = guests()
    start_hvm_domain(fake, serial.path, 5901)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore),
                              adverts=xen.adverts(5907, ("192.0.2.1", 5507)))
    source.open()
    try:
        assert fake.store.read(VNCTERM_PORT_KEY) == "5907"
        assert fake.store.read(REVERSE_KEY) == "192.0.2.1:5507"
        assert fake.store.read(PORT_KEY) == "5901"
        assert not [call for call in fake.store.calls("write") if call[1] == PORT_KEY]
    finally:
        source.close()
    assert fake.store.read(PORT_KEY) == "5901", "the device model's key stays"
    assert fake.store.read(VNCTERM_PORT_KEY) is None and fake.store.read(REVERSE_KEY) is None


def test_an_hvm_domain_gets_vncterm_port_even_before_its_device_model_writes(fake, guests):
    serial = guests()
    start_hvm_domain(fake, serial.path)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore), adverts=xen.adverts(5907))
    source.open()
    try:
        assert fake.store.read(VNCTERM_PORT_KEY) == "5907"
        assert fake.store.read(PORT_KEY) is None
    finally:
        source.close()


def test_a_port_key_taken_over_after_we_published_it_is_left_alone(fake, guests):
    pv = guests()
    fake.start_domain(pv)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore), adverts=xen.adverts(5907))
    source.open()
    assert fake.store.read(PORT_KEY) == "5907"
    fake.store.write(PORT_KEY, "5901")  # a PV guest's vfb device model starts
    source.close()
    assert fake.store.read(PORT_KEY) == "5901"


@pytest.mark.parametrize(("listen", "address"), [
    (None, ("127.0.0.1", 5901)), ("0.0.0.0", ("127.0.0.1", 5901)), ("::", ("::1", 5901)),
    ("192.0.2.5", ("192.0.2.5", 5901)), ("localhost", ("127.0.0.1", 5901)),
    ("evil.example", None), ("127.0.0.1 -x", None)])
def test_the_display_address_is_read_as_xl_vncviewer_reads_it(fake, listen, address):
    start_hvm_domain(fake, "/dev/pts/0", 5901)
    if listen is not None:
        fake.store.write(LISTEN_KEY, listen)
    assert xen.Domain(DOMAIN, fake.xenstore).desktop_address() == address


@pytest.mark.parametrize("port", ["0", "65536", "59O1", "5901\n1", ""])
def test_a_bad_port_is_no_address(fake, port):
    start_hvm_domain(fake, "/dev/pts/0", port)
    assert xen.Domain(DOMAIN, fake.xenstore).desktop_address() is None


def test_the_source_follows_the_device_model_and_never_dials_itself(fake, guests, run_console):
    serial = guests()
    start_hvm_domain(fake, serial.path, 5901)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore), adverts=xen.adverts(5907))
    term = run_console(source)
    assert peers.wait_until(lambda: source.desktop_address() == ("127.0.0.1", 5901))
    fake.store.rm(PORT_KEY)  # the device model stops
    assert peers.wait_until(lambda: source.desktop_address() is None)
    fake.store.write(LISTEN_KEY, "192.0.2.5")
    fake.store.write(PORT_KEY, "5902")  # and starts again, elsewhere
    assert peers.wait_until(lambda: source.desktop_address() == ("192.0.2.5", 5902))
    fake.store.write(PORT_KEY, "5907")  # our own port, left by an earlier vncterm
    assert peers.wait_until(lambda: source.desktop_address() is None)
    assert term.status == ""


def test_a_pv_domains_port_key_that_we_wrote_is_not_a_desktop(fake, guests):
    pv = guests()
    fake.start_domain(pv)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore), adverts=xen.adverts(6000))
    source.open()
    try:
        assert fake.store.read(PORT_KEY) == "6000"
        assert source.domain.desktop_address() is None
    finally:
        source.close()


def test_the_helper_answers_where_the_display_is(fake):
    start_hvm_domain(fake, "/dev/pts/0", 5901)
    helper = roothelper.Helper.start(xen.Domain(DOMAIN, fake.xenstore))
    try:
        assert helper.desktop_address() == ("127.0.0.1", 5901)
        fake.store.rm(PORT_KEY)
        assert helper.desktop_address() is None
    finally:
        helper.close()


# --- The real device model: QEMU ------------------------------------------------------------

VNC_SERVER = re.compile(r"Server: 127\.0\.0\.1:(\d+)")
VGA_RED = (170, 0, 0)  # the VGA palette's red, as a Linux text console paints it
PAINT_TTY1 = r"printf '\033[41m\033[2J' > /dev/tty1"


class HvmGuest(QemuGuest):
    """A paused QEMU as Xen runs an HVM guest's device model: a standard VGA card served over
    VNC, the first serial port on a pty (.path). `vnc` is QEMU's -vnc argument: a listening
    server (its port is then .vnc_port) or `HOST:PORT,reverse=on`."""

    def __init__(self, kernel, initrd, log_path, vnc):
        super().__init__(kernel, initrd, log_path, extra=("-vga", "std", "-vnc", vnc),
                         append="console=tty1 console=ttyS0 panic=-1")
        self.vnc_port = None if "reverse" in vnc else self._ask_vnc_port()

    def monitor(self, command):
        """Send a command to QEMU's monitor; what it prints goes to .lines."""
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _ask_vnc_port(self):
        """The port QEMU's VNC server took, from `info vnc` on its monitor."""
        self.monitor("info vnc")
        found = peers.wait_until(lambda: VNC_SERVER.search("".join(self.lines)), 30)
        assert found, "".join(self.lines)
        return int(found[1])


@pytest.fixture
def hvm_guests(initrd, artifacts):
    """hvm_guests(vnc) -> a paused HvmGuest; every one is killed at teardown."""
    kernel = require_kernel()
    started = []

    def start(vnc="127.0.0.1:0,to=500"):
        started.append(HvmGuest(kernel, initrd, artifacts / f"qemu{len(started)}.log", vnc))
        return started[-1]

    yield start
    for guest in started:
        guest.stop()


def red_pixels(image):
    return sum(1 for pixel in image.get_flattened_data() if near(pixel, VGA_RED))


def red_errors(image):
    """Errors in a capture that should be the VGA screen painted red; [] when it is."""
    red, pixels = red_pixels(image), image.width * image.height
    if red < 0.8 * pixels:
        return [f"only {red} of {pixels} pixels are VGA red"]
    return []


def window_errors(screenshot, vga):
    """Errors in a screenshot of a viewer's window that should show the red VGA screen (vga)
    or the serial console; the VGA text mode is 720x400."""
    red = red_pixels(screenshot)
    if vga and red < 0.8 * 720 * 400:
        return [f"{red} VGA red pixels on screen: not the VGA screen"]
    if not vga and red > 0.1 * 720 * 400:
        return [f"{red} VGA red pixels on screen: the VGA screen, not the console"]
    return []


def console_size(server):
    """The size of the serial console's framebuffer, as a new viewer switched to it sees it."""
    return vncdo_capture(server, server.folder / "console.png", *hotkey("f1")).size


def console_errors(image, size):
    """Errors in a capture that should be the serial console, of `size`."""
    if image.size != size:
        return [f"capture is {image.width}x{image.height}, the console is {size[0]}x{size[1]}"]
    return [] if red_errors(image) else ["the capture is the red VGA screen, not the console"]


def boot_and_paint(server, guest, boots):
    """Let the guest boot to its serial shell, then paint its VGA screen red from a viewer.

    A new viewer starts on the desktop when there is one: Ctrl-Alt-F1 takes it to the shell.
    """
    guest.cont()
    raw = server.folder / "console.log"
    assert peers.wait_until(lambda: booted(raw, boots), BOOT_TIMEOUT), server.report()
    peers.vncdo(server, *hotkey("f1"), "type", PAINT_TTY1, "key", "enter")


def attached(server, guest):
    """vncterm has the guest's serial port open (it publishes its port then)."""
    store = server.fake.store
    assert peers.wait_until(lambda: store.read(VNCTERM_PORT_KEY) == str(server.port)), \
        server.report()


@pytest.mark.parametrize("user", [None, "nobody"])
def test_qemu_serial_console_and_vga_screen_behind_one_port(hvm_guests, vncdo_viewers, fake,
                                                            artifacts, user):
    """With --user nobody, the root helper reads where the display is."""
    peers.require("vncdotool")
    if user:
        peers.require("root", installed=os.geteuid() == 0, how="run the tests as root, as CI does")
    guest = hvm_guests()
    start_hvm_domain(fake, guest.path, guest.vnc_port)
    options = ["--verbose", *(["--user", user] if user else [])]
    with VncTermDomain(fake, artifacts, options) as server:
        attached(server, guest)
        assert fake.store.read(PORT_KEY) == str(guest.vnc_port), "QEMU's key is left alone"
        boot_and_paint(server, guest, 1)
        serial = console_size(server)
        viewer = vncdo_viewers(server)
        settle(lambda: red_errors(viewer.capture("vga")))
        viewer.do("keyPress ctrl-alt-f1")
        settle(lambda: console_errors(viewer.capture("serial"), serial))
        viewer.do("keyPress ctrl-alt-f7")
        settle(lambda: red_errors(viewer.capture("vga-again")))

        guest.stop()  # the device model dies; its keys stay behind, stale
        settle(lambda: console_errors(viewer.capture("qemu-killed"), serial))
        assert peers.wait_until(lambda: fake.store.read(VNCTERM_PORT_KEY) is None)
        again = hvm_guests(f"127.0.0.1:{guest.vnc_port - 5900 + 1},to=500")  # another port
        start_hvm_domain(fake, again.path, again.vnc_port)
        attached(server, again)
        boot_and_paint(server, again, 2)
        settle(lambda: red_errors(viewer.capture("vga-restarted")))
        server.stop()
    assert fake.store.read(PORT_KEY) == str(again.vnc_port)
    assert fake.store.read(VNCTERM_PORT_KEY) is None


def test_qemu_as_a_reverse_connection_seen_in_tigervnc(hvm_guests, xvfb, fake, artifacts):
    """QEMU connects back (-vnc ...,reverse=on); TigerVNC's vncviewer switches with Ctrl-Alt-1
    and Ctrl-Alt-7 (the X server it runs on keeps Ctrl-Alt-Fn for itself)."""
    peers.require("vncdotool")
    with VncTermDomain(fake, artifacts, ["--verbose"]) as server:
        reverse = peers.wait_until(lambda: desktop_address(server))
        guest = hvm_guests(f"{reverse},reverse=on")
        start_hvm_domain(fake, guest.path)
        attached(server, guest)
        boot_and_paint(server, guest, 1)
        tiger = TigerViewer(xvfb, server)
        settle(lambda: window_errors(tiger.screenshot(), vga=True))
        tiger.hotkey("1")
        settle(lambda: window_errors(tiger.screenshot(), vga=False))
        tiger.hotkey("7")
        settle(lambda: window_errors(tiger.screenshot(), vga=True))
        guest.stop()
        settle(lambda: window_errors(tiger.screenshot(), vga=False))
        server.stop()


def test_qemu_asking_for_a_password_is_dialled_with_the_desktop_password(hvm_guests, vncdo_viewers,
                                                                         fake, artifacts):
    peers.require("vncdotool")
    guest = hvm_guests("127.0.0.1:0,to=500,password=on")
    guest.monitor("set_password vnc dm-secret")
    password = artifacts / "desktop.pass"
    password.write_text("dm-secret\n")
    start_hvm_domain(fake, guest.path, guest.vnc_port)
    options = ["--verbose", "--desktop-password-file", str(password)]
    with VncTermDomain(fake, artifacts, options) as server:
        attached(server, guest)
        boot_and_paint(server, guest, 1)
        viewer = vncdo_viewers(server)
        settle(lambda: red_errors(viewer.capture("vga")))
        server.stop()
