"""The guest's desktop: a VNC proxy that viewers VT-switch to and from the text console.

The guest's X server is Xvnc (or x11vnc, or an installer) and connects *to us* on the reverse
port, the way `vncconfig -connect` and `x11vnc -connect` reach a listening viewer; or we dial a
guest server that only listens: `--desktop-connect`'s, or with `--domain` the VNC server of the
domain's device model (QEMU's VGA screen), wherever xenstore says it is now (xen.py).  Who
opens the socket is the only difference: both end up in one `Upstream` thread that speaks RFB
as the client (rfbclient.py), asks the guest for Raw, CopyRect, the resize pseudo-encodings and
Cursor in our own pixel format, and decodes every update into a *shadow framebuffer*, the
picture of a `DesktopDisplay`.

Viewers never see a byte of the guest's stream.  They get pixels re-encoded from the shadow
with their own encoders and zlib state, exactly as for the console, because a viewer's inflater
cannot survive a splice of two servers' streams (docs/protocol.md, "Compression state";
docs/design.md, "Why a shadow framebuffer").  So a VT switch is only: pick the other display,
resize the viewer, repaint.  Input goes the other way: keys, pointer and clipboard are
forwarded to the guest as they come.  The clipboard goes both ways through a
clipboard.ClipboardLink towards the guest: UTF-8 with a guest that speaks the Extended
Clipboard, Latin-1 otherwise, whatever each viewer speaks (each viewer's own link converts).
Ctrl-Alt-V types a viewer's clipboard into the guest as key presses (`typing`), for screens
that have no clipboard.

Resizing.  A viewer's SetDesktopSize goes to the guest, as one screen of the size asked for,
when the guest has said it speaks ExtendedDesktopSize (TigerVNC's Xvnc does: it resizes its
screen), and the guest's answer goes back to that viewer; a guest that has not said so gets
nothing and the viewer hears "prohibited".  One request is in flight at a time: another
viewer asking meanwhile hears "out of resources", as rfbproto allows.

QEMU speaks three input extensions, and we ask for all of them: it accepts keys as scancodes
(QEMU Extended Key Event), reports its lock-key LEDs (LED State) and says whether it wants
absolute or relative pointer events (Pointer Type Change).  The desktop display records what
the guest said; each viewer session passes it on in the form that viewer listed (updates.py)
and sends scancodes, keysyms and pointer motion back in the form the guest takes (viewer.py).

Which display a viewer shows is vt.py's table, Ctrl-Alt-F1 and Ctrl-Alt-F7 moving it.  At most
one desktop per console: a new guest connection replaces the old one, so a guest that rebooted
without closing its socket is not locked out.

The guest is untrusted: every size and rectangle is checked before use (rfbclient), the
framebuffer is capped (rfbclient.MAX_DESKTOP_PIXELS), input it does not read is capped and then
the guest is dropped, a guest that stalls mid-message for `STALL_TIMEOUT` is dropped, the
whole handshake must be over within `HANDSHAKE_TIMEOUT`, and at most `MAX_GUEST_CONNECTIONS`
guest connections are open at once.  When the guest goes, viewers on its desktop return to the
console.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from PIL import Image

import clipboard
import damage
import display
import keymap
import options
import rfb
import rfbclient
from clipboard import Hand
from netio import PeerGone, Wakeup, recv_exactly
from rfb import SecurityType

log = logging.getLogger("vncterm.proxy")

HANDSHAKE_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0
RETRY_DELAY = 2.0
INPUT_LIMIT = 1024 * 1024
MAX_GUEST_CONNECTIONS = 4  # the desktop, plus handshakes in flight (a reboot, a replacement)
TYPING_LIMIT = 64 * 1024  # characters of a typed paste
TYPING_INTERVAL = 0.01  # seconds per character: a firmware screen keeps up with 100 a second

# --- The desktop as a display ---------------------------------------------------------------


class DesktopDisplay(display.SharedPicture):
    """The shadow of the guest's screen, drawn as the guest's updates arrive (see display.py)."""

    def __init__(self, width: int, height: int, upstream: Upstream) -> None:
        super().__init__((width, height))
        self.image = Image.new("RGB", self.size)
        self.bells = 0
        self.upstream = upstream
        self.link = clipboard.ClipboardLink(rfbclient.client_cut_text, rfbclient.client_clipboard)
        self.screen: rfb.Screen | None = None
        self._pending: list = []
        self._resize_answer = None

    def apply(self, event) -> None:
        """Draw one decoded event from the guest into the shadow framebuffer."""
        with self.lock:
            if isinstance(event, rfbclient.RawRows):
                rows = len(event.data) // (4 * event.width)
                tile = Image.frombytes("RGB", (event.width, rows), event.data, "raw", "BGRX")
                self.image.paste(tile, (event.x, event.y))
                self._pending.append((event.x, event.y, event.width, rows))
            elif isinstance(event, rfbclient.CopyRect):
                source = (event.src_x, event.src_y,
                          event.src_x + event.width, event.src_y + event.height)
                self.image.paste(self.image.crop(source), (event.x, event.y))
                self._pending.append((event.x, event.y, event.width, event.height))
            elif isinstance(event, rfbclient.DesktopResize):
                self._resized(event)
            elif isinstance(event, rfbclient.CursorShape):
                self.cursor = event
            elif isinstance(event, rfbclient.UpdateEnd):
                if self._pending:
                    self.damage.record(0, damage.merge(self._pending))
                    self._pending = []
            elif isinstance(event, rfbclient.Bell):
                self.bells += 1
            elif isinstance(event, rfbclient.ServerCutText):
                self.link.receive_plain(event.text)
                self.cut_text = (self.cut_text[0] + 1, self.link.received)
            elif isinstance(event, rfb.ExtendedClipboard):
                answer, changed = self.link.receive(event)
                self.upstream.send(answer)
                if changed:
                    self.cut_text = (self.cut_text[0] + 1, self.link.received)
            elif isinstance(event, rfbclient.ExtendedKeysAccepted):
                self.extended_keys = True
            elif isinstance(event, rfbclient.LedState):
                self.led_state = event.state
            elif isinstance(event, rfbclient.PointerTypeChange):
                self.absolute_pointer = event.absolute
        if isinstance(event, rfbclient.DesktopResize) and event.answer is not None:
            self._answer_resize(event.answer)
        if not isinstance(event, rfbclient.RawRows | rfbclient.CopyRect):
            self.notify()

    def _resized(self, event: rfbclient.DesktopResize) -> None:
        """The guest's size, and its screen; a new size is a blank picture the guest repaints."""
        self.screen = event.screen or self.screen
        if (event.width, event.height) != self.size:
            self.size = (event.width, event.height)
            self.image = Image.new("RGB", self.size)
            self.damage.reset(self.size)
            self._pending.clear()

    def _answer_resize(self, status: int) -> None:
        """Hand the guest's answer to the viewer that asked, if one waits for it."""
        with self.lock:
            answer, self._resize_answer = self._resize_answer, None
        if answer is not None:
            answer(status)

    def key(self, keysym: int, down: bool, modifiers: keymap.Modifiers) -> None:
        if down:
            self.upstream.typing.stop(modifiers)
        self.upstream.send(rfbclient.key_event(down, keysym))

    def extended_key(self, keysym: int, keycode: int, down: bool,
                     modifiers: keymap.Modifiers) -> None:
        """A key as its scancode, passed through untouched (only while extended_keys)."""
        if down:
            self.upstream.typing.stop(modifiers)
        self.upstream.send(rfbclient.qemu_extended_key_event(down, keysym, keycode))

    def pointer(self, button_mask: int, x: int, y: int, hand: Hand) -> None:
        width, height = self.size
        self.upstream.send(rfbclient.pointer_event(
            button_mask, min(x, width - 1), min(y, height - 1)))

    def pointer_motion(self, button_mask: int, dx: int, dy: int) -> None:
        """Relative motion, for a guest that asked for it with Pointer Type Change."""
        x, y = (max(0, min(0xFFFF, rfb.POINTER_RELATIVE_ORIGIN + d)) for d in (dx, dy))
        self.upstream.send(rfbclient.pointer_event(button_mask, x, y))

    def resize(self, width: int, height: int, answer: Callable[[int], None]) -> None:
        with self.lock:
            screen, busy = self.screen, self._resize_answer is not None
            if screen is not None and not busy:
                self._resize_answer = answer
        if screen is None:
            answer(rfb.ExtendedDesktopSizeStatus.PROHIBITED)
        elif busy:
            answer(rfb.ExtendedDesktopSizeStatus.OUT_OF_RESOURCES)
        else:
            self.upstream.send(rfbclient.set_desktop_size(width, height, screen))

    def clipboard(self, text: str) -> None:
        with self.lock:
            self.upstream.send(self.link.give(text))

    def paste(self, hand: Hand) -> None:
        self.upstream.typing.start(hand.clipboard.received, hand.modifiers)


class Typing:
    """A typed paste in progress: a character's key presses every TYPING_INTERVAL (sans-IO:
    the guest's thread asks `due(now)` for what to send and `wait(now)` how long to sleep).
    Its owner is the viewer that asked (its keymap.Modifiers), whose next key stops it."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._text = ""
        self._typed = 0
        self._next = 0.0
        self._owner = None

    def start(self, text: str, owner) -> None:
        with self._lock:
            self._text, self._typed = clipboard.normal_lines(text)[:TYPING_LIMIT], 0
            self._next = self.clock()
            self._owner = owner

    def stop(self, owner) -> None:
        """The owner pressed a key: stop typing (another viewer's key does not)."""
        with self._lock:
            if owner is self._owner:
                self._text = ""

    def wait(self, now: float) -> float | None:
        """Seconds until the next character is due, None when nothing is being typed."""
        with self._lock:
            return max(0.0, self._next - now) if self._typed < len(self._text) else None

    def due(self, now: float) -> bytes:
        """The key events of the characters due by `now`."""
        events = []
        with self._lock:
            self._next = max(self._next, now - TYPING_INTERVAL)  # after a stall, no burst
            while self._typed < len(self._text) and self._next <= now:
                for keysym, down in keymap.typed_keys(self._text[self._typed]):
                    events.append(rfbclient.key_event(down, keysym))
                self._typed += 1
                self._next += TYPING_INTERVAL
        return b"".join(events)


# --- One guest connection -----------------------------------------------------------------------


class GuestGone(Exception):
    """The guest closed the connection or stopped talking."""


class AuthenticationRefused(rfb.ProtocolError):
    """The guest wants a password we do not have, or refused the one we gave."""


class Upstream:
    """RFB client to one guest server, on a socket someone else connected."""

    def __init__(self, sock: socket.socket, peer: str, password: bytes | None) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.peer = peer
        self.password = password
        self.display: DesktopDisplay | None = None
        self.typing = Typing()
        self._outbox = bytearray()
        self._outbox_lock = threading.Lock()
        self._wakeup = Wakeup()
        self._closing = False
        self.refused = False

    def run(self, on_up, on_down) -> None:
        """Handshake, then mirror the guest until it goes; report both to the callbacks."""
        try:
            width, height = self.handshake()
            self.display = DesktopDisplay(width, height, self)
            log.info("guest desktop %s connected, %dx%d", self.peer, width, height)
            on_up(self.display)
            self.serve()
        except AuthenticationRefused as error:
            self.refused = True
            log.error("guest %s: %s", self.peer, error)
        except rfb.ProtocolError as error:
            log.warning("guest %s: protocol error: %s", self.peer, error)
        except (GuestGone, PeerGone, OSError) as error:
            log.info("guest %s: gone (%s)", self.peer, error)
        except Exception:
            log.exception("guest %s: internal error", self.peer)
        finally:
            self.sock.close()
            self._wakeup.close()
            if self.display is not None:
                log.info("guest desktop %s disconnected", self.peer)
                on_down(self.display)

    def close(self) -> None:
        """Ask the connection to end (from any thread)."""
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        """Queue input for the guest (from viewer threads); never blocks."""
        with self._outbox_lock:
            if len(self._outbox) + len(data) > INPUT_LIMIT:
                self.close()
                return
            self._outbox += data
        self._wakeup.poke()

    # The handshake, as a client (RFC 6143 §7.1-7.3), each step parsed by rfbclient.

    def handshake(self) -> tuple[int, int]:
        """RFC 6143 §7.1-7.3 as the client, within one HANDSHAKE_TIMEOUT for all of it."""
        reader = rfbclient.HandshakeReader()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        self.sock.settimeout(HANDSHAKE_TIMEOUT)

        def read(step, *args):
            while (value := step(*args)) is None:
                reader.feed(recv_exactly(self.sock, reader.needed, deadline))
            return value

        version = read(reader.version)
        self.sock.sendall(rfbclient.version_bytes(version))
        chosen = self.choose_security(version, read(reader.security_types, version))
        if chosen == SecurityType.VNC_AUTHENTICATION:
            self.sock.sendall(rfb.vnc_auth_response(read(reader.challenge), self.password))
        if rfb.needs_security_result(version, chosen):
            result = read(reader.security_result, version)
            if not result.ok:
                reason = "no reason given" if result.reason is None else repr(result.reason)
                raise AuthenticationRefused(f"guest refused authentication: {reason}")
        self.sock.sendall(rfbclient.client_init(shared=True))
        init = read(reader.server_init)
        self.sock.sendall(
            rfbclient.set_pixel_format(rfb.DEFAULT_PIXEL_FORMAT)
            + rfbclient.set_encodings(list(rfbclient.ServerReader.ENCODINGS))
            + rfbclient.framebuffer_update_request(False, init.width, init.height))
        return init.width, init.height

    def choose_security(self, version, offered: list[int]) -> int:
        """The first type we can use of those offered; under 3.7+ tell the guest."""
        usable = [SecurityType.NONE]
        if self.password is not None:
            usable.append(SecurityType.VNC_AUTHENTICATION)
        for kind in usable:
            if kind in offered:
                if version != rfb.VERSION_3_3:
                    self.sock.sendall(rfbclient.security_choice(kind))
                return kind
        hint = "" if self.password else " (give --desktop-password-file for VNC authentication)"
        raise AuthenticationRefused(f"guest offers security types {offered}, none usable{hint}")

    # Mirroring.

    def serve(self) -> None:
        self.sock.setblocking(False)
        reader = rfbclient.ServerReader(*self.display.size)
        last_data = time.monotonic()
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wakeup, selectors.EVENT_READ)
            while not self._closing:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._outbox else 0)
                selector.modify(self.sock, events)
                timeout = STALL_TIMEOUT / 4 if reader.mid_message else None
                typing = self.typing.wait(time.monotonic())
                if typing is not None:
                    timeout = typing if timeout is None else min(timeout, typing)
                for key, _ in selector.select(timeout):
                    if key.fileobj is self._wakeup:
                        self._wakeup.drain()
                    elif self.receive(reader):
                        last_data = time.monotonic()
                self.send(self.typing.due(time.monotonic()))
                self.flush()
                if reader.mid_message and time.monotonic() - last_data > STALL_TIMEOUT:
                    raise GuestGone(f"stalled mid-message for {STALL_TIMEOUT:.0f} s")

    def receive(self, reader: rfbclient.ServerReader) -> bool:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return False
        if not data:
            raise GuestGone("replaced or stopped" if self._closing else "closed by the guest")
        reader.feed(data)
        while (event := reader.next_event()) is not None:
            self.display.apply(event)
            if isinstance(event, rfbclient.UpdateEnd):
                self.send(rfbclient.framebuffer_update_request(True, *self.display.size))
        return True

    def flush(self) -> None:
        with self._outbox_lock:
            if not self._outbox:
                return
            try:
                sent = self.sock.send(self._outbox)
            except BlockingIOError:
                return
            del self._outbox[:sent]


# --- Where guest connections come from ------------------------------------------------------


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def allow_only(networks) -> Callable[[str], bool]:
    """A check for a peer's address: is it in one of `networks`?"""
    def allowed(host: str) -> bool:
        address = ipaddress.ip_address(host)
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in networks)
    return allowed


LOOPBACK_ONLY = allow_only(LOOPBACK)


class Desktops:
    """Reverse connections and dialled guests, at most one desktop at a time.

    `on_change(display_or_None)` is called (from an upstream thread) when a desktop comes up,
    is replaced, or goes away.  A new guest replaces the current desktop only once its
    handshake has succeeded, so a bad connection cannot knock out a good desktop.  A reverse
    connection from an address that `allow` refuses is closed before a byte is exchanged.
    """

    def __init__(self, on_change, password: bytes | None = None,
                 allow: Callable[[str], bool] = LOOPBACK_ONLY) -> None:
        self.on_change = on_change
        self.password = password
        self.allow = allow
        self.current: Upstream | None = None
        self._upstreams: set[Upstream] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._no_desktop = threading.Event()
        self._no_desktop.set()

    def accept(self, listener: socket.socket) -> tuple[str, int]:
        """Accept reverse connections on a listening socket, ours to close now; its address."""
        self._listener = listener
        self._start(self._accept_loop, "reverse-listener")
        return listener.getsockname()[:2]

    def dial(self, where: Callable[[], tuple[str, int] | None]) -> None:
        """Keep a connection to a listening guest server, retrying until it answers.

        `where()` says where it listens now, or None while it listens nowhere: it is asked
        again before each attempt, so the dialler follows a server that moves.
        """
        self._start(lambda: self._dial_loop(where), "desktop-dialer")

    def stop(self) -> None:
        self._stopping.set()
        self._no_desktop.set()
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            upstreams = list(self._upstreams)
        for upstream in upstreams:
            upstream.close()
        for thread in self._threads:
            thread.join()

    def _start(self, target, name: str) -> None:
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return
            peer = "%s:%s" % address[:2]
            if not self.allow(address[0]):
                log.warning("guest connection from %s refused: not a --reverse-allow address",
                            peer)
                sock.close()
                continue
            upstream = self._admit(sock, peer)
            if upstream is not None:
                self._start(lambda upstream=upstream: self._run(upstream), f"upstream-{peer}")

    def _dial_loop(self, where) -> None:
        """Dial while no other desktop is up; give up for good if the guest refuses us."""
        while not self._stopping.is_set():
            self._no_desktop.wait()
            address = where()
            if address is None:
                self._stopping.wait(RETRY_DELAY)
                continue
            try:
                sock = socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT)
            except OSError as error:
                log.debug("desktop %s:%s not answering: %s", *address, error)
            else:
                upstream = self._admit(sock, "%s:%s" % address)
                if upstream is not None and self._run(upstream).refused:
                    log.error("stopped dialling %s:%s: fix --desktop-password-file and restart",
                              *address)
                    return
            self._stopping.wait(RETRY_DELAY)

    def _admit(self, sock: socket.socket, peer: str) -> Upstream | None:
        """An Upstream for a new guest connection, or None (and the socket closed) when we
        are stopping or MAX_GUEST_CONNECTIONS are open: a guest is untrusted, and each
        connection costs a thread until its handshake times out."""
        with self._lock:
            refusal = None
            if self._stopping.is_set():
                refusal = "stopping"
            elif len(self._upstreams) >= MAX_GUEST_CONNECTIONS:
                refusal = f"{MAX_GUEST_CONNECTIONS} guest connections are open"
            else:
                try:
                    upstream = Upstream(sock, peer, self.password)
                except OSError as error:
                    refusal = str(error)
                else:
                    self._upstreams.add(upstream)
                    return upstream
        log.warning("guest connection from %s refused: %s", peer, refusal)
        sock.close()
        return None

    def _run(self, upstream: Upstream) -> Upstream:
        try:
            upstream.run(lambda display: self._up(upstream, display),
                         lambda display: self._down(upstream))
        finally:
            with self._lock:
                self._upstreams.discard(upstream)
        return upstream

    def _up(self, upstream: Upstream, display: DesktopDisplay) -> None:
        with self._lock:
            previous, self.current = self.current, upstream
            self._no_desktop.clear()
        if previous is not None:
            log.info("guest %s replaces the desktop of %s", upstream.peer, previous.peer)
            previous.close()
        self.on_change(display)

    def _down(self, upstream: Upstream) -> None:
        with self._lock:
            current = self.current is upstream
            if current:
                self.current = None
                self._no_desktop.set()
        if current:
            self.on_change(None)


# --- Command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("guest desktop (the VNC proxy)")
    group.add_argument("--reverse-listen", default="127.0.0.1", metavar="ADDR",
                       help="address for the guest's reverse connection (127.0.0.1)")
    group.add_argument("--reverse-port", type=options.port_number, metavar="P",
                       help="port for the guest's reverse connection (5500, or 5500+N with "
                            "--domain; 0 picks one)")
    group.add_argument("--reverse-allow", action="append", type=ipaddress.ip_network,
                       metavar="ADDR[/PREFIX]",
                       help="who may connect to the reverse port (repeatable; loopback, and "
                            "with --domain the guest's own addresses)")
    group.add_argument("--no-desktop", action="store_true",
                       help="open no reverse port (--desktop-connect still dials)")
    group.add_argument("--desktop-connect", metavar="HOST:PORT", type=options.address,
                       help="dial a guest VNC server that only listens, retrying until it "
                            "answers")
    group.add_argument("--desktop-password-file", metavar="FILE",
                       help="VNC password for the guest's server (first line of FILE)")


def read_password(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.readline().rstrip(b"\r\n")


def listen(args) -> socket.socket | None:
    """The reverse port the options ask for, bound and listening; None with --no-desktop."""
    if args.no_desktop:
        return None
    try:
        return socket.create_server((args.reverse_listen, args.reverse_port))
    except OSError as error:
        raise OSError(f"cannot listen for guest desktops on {args.reverse_listen}:"
                      f"{args.reverse_port}: {error.strerror} (see --reverse-port, "
                      "--no-desktop)") from error


def start(args, listener: socket.socket | None, password: bytes | None, on_change,
          allow: Callable[[str], bool], where=None) -> Desktops:
    """Accept guest desktops on `listener` (from listen()), and dial one: --desktop-connect's,
    else wherever `where()` says (a Xen domain's device model), if given."""
    desktops = Desktops(on_change, password, allow)
    if listener is not None:
        host, port = desktops.accept(listener)
        print(f"vncterm: guest desktops connect to {host}:{port}", flush=True)
    if args.desktop_connect:
        desktops.dial(lambda: args.desktop_connect)
    elif where is not None:
        desktops.dial(where)
    return desktops
