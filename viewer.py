"""One viewer's session: the handshake, then updates out and input in, and the VT switch.

`ViewerSession` is a socketserver request handler, so each viewer has a thread of its own.
The handshake (RFC 6143 §7.1-7.3) is straight-line blocking code with one deadline for all of
it (a shorter one for the viewer's version, and moved by a password check's wait for its
turn), each step parsed by rfb.py and the security step decided by auth.py: the program
counter is the state.  With VeNCrypt the socket is swapped for a TLS one half-way through, so the
session reads and writes `self.sock` and treats TLS's "want read/write" like "would block".
After ServerInit the session runs a small event loop on `selectors` over the viewer's socket
and a wake-up socketpair.  Displays poke the socketpair when their picture changed, and the
server posts desktop up/down events.

Flow control.  Writes are non-blocking into an outbox.  RFB is pull-based: an update is built
only when the viewer has asked for one, and only while less than `SOFT_OUTBOX` bytes wait to
be read, so a slow viewer gets fewer, bigger updates and a stalled one gets none; one that has
not read for `WRITE_STALL_TIMEOUT`, or lets `HARD_OUTBOX` pile up (bells and clipboard need no
request), is dropped.  No viewer can hold up the console, the guest or another viewer.

The VT switch.  A session shows one *display* at a time, the text console or the guest
desktop (display.py states the interface), and its state follows the table in vt.py.
Switching releases every key and button still held on the display being left and drops
key releases for keys pressed on the other one, so no key is stuck anywhere; then
the viewer is resized (ExtendedDesktopSize where it listed it, else DesktopSize) and
repainted in full.  A viewer that listed neither cannot be resized: it stays on the console
(whose status line says why) unless the desktop happens to be its size; if it started on the
desktop and the desktop goes, it sees the console in the top-left corner of its framebuffer.

A viewer that gave the view-only password watches only: its keys, pointer and clipboard go
nowhere (the VT-switch hotkeys still move its own view) and it cannot ask for exclusive access.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import socketserver
import ssl
import time

from PIL import Image

import auth
import damage
import encoders
import keymap
import netio
import rfb
import vt
from rfb import Encoding, SecurityType

log = logging.getLogger("vncterm")

SOFT_OUTBOX = 256 * 1024
HARD_OUTBOX = 8 * 1024 * 1024
WRITE_STALL_TIMEOUT = 30.0
SEND_CHUNK = 64 * 1024
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
DOT_CURSOR = (1, 1, 3, 3, b"\xff\xff\xff\x00" * 9, b"\xe0\xe0\xe0")


class ViewerGone(Exception):
    """The viewer closed its connection or stopped reading; nothing to report."""


class ViewerSession(socketserver.BaseRequestHandler):
    """One viewer: the handshake, then updates out and input in until it leaves."""

    def setup(self) -> None:
        self.peer = "%s:%s" % self.client_address[:2]
        self.host = self.client_address[0]
        self.sock = self.request
        self.security = self.server.security
        self.view_only = False
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.encoder = encoders.ViewerEncoder()
        self.reader = rfb.ClientReader()
        self.modifiers = keymap.Modifiers()
        self.outbox = bytearray()
        self.events: collections.deque = collections.deque()
        self.held_keys: set[int] = set()
        self.pointer = (0, 0, 0)
        self.closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._poked = False
        self.server.add_session(self)
        desktop = self.server.desktop
        self.state = vt.DESKTOP if desktop else vt.NO_DESKTOP
        self.display = desktop or self.server.console

    def handle(self) -> None:
        try:
            self.handshake()
            log.info("viewer %s connected%s", self.peer, " (view-only)" if self.view_only else "")
            self.serve()
        except rfb.ProtocolError as error:
            log.warning("viewer %s: protocol error: %s", self.peer, error)
        except auth.Refused as error:
            log.warning("viewer %s: refused: %s", self.peer, error)
        except (ViewerGone, netio.PeerGone, OSError) as error:
            log.info("viewer %s: gone (%s)", self.peer, error or "closed")
        except Exception:
            log.exception("viewer %s: internal error", self.peer)

    def finish(self) -> None:
        self.release_input()
        self.display.listeners.discard(self.poke)
        self.server.remove_session(self)
        self._wake_r.close()
        self._wake_w.close()
        if self.sock is not self.request:
            self.sock.close()  # the TLS socket; socketserver closes only the one it accepted
        log.info("viewer %s disconnected; rects sent: %s", self.peer,
                 dict(self.encoder.sent) or "none")

    def close(self) -> None:
        """Ask the session to end (from any thread)."""
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def poke(self) -> None:
        """Something changed (called from other threads)."""
        if not self._poked:
            self._poked = True
            try:
                self._wake_w.send(b"!")
            except OSError:
                pass

    def post(self, event: str, display) -> None:
        """A desktop came or went (called from other threads)."""
        self.events.append((event, display))
        self.poke()

    # The handshake, RFC 6143 §7.1-7.3: the program counter is the state.

    def handshake(self) -> None:
        with self.security.waiting.admit(self.host, self.close) as place:
            started = time.monotonic()
            self.deadline = started + min(auth.VERSION_TIMEOUT, self.server.handshake_timeout)
            self.sock.settimeout(self.server.handshake_timeout)
            self.sock.sendall(rfb.SERVER_VERSION)
            version = rfb.parse_client_version(self.recv_exactly(rfb.VERSION_LENGTH))
            self.security.waiting.talked(place)
            if place.refusal:
                self.turn_away(rfb.security_refusal(version, place.refusal), place.refusal)
            self.deadline = started + self.server.handshake_timeout
            self.authenticate(version)
            shared = rfb.parse_client_init(self.recv_exactly(1))
        if not shared and not self.view_only:
            self.server.disconnect_others(self)
        self.size = width, height = self.display.size
        pixel_format = rfb.DEFAULT_PIXEL_FORMAT
        self.sock.sendall(rfb.server_init(width, height, pixel_format, self.server.name))

    def authenticate(self, version: tuple[int, int]) -> None:
        """Offer security types and run the chosen one up to its SecurityResult, §7.1.2-7.1.3."""
        if self.server.too_many(self):
            self.turn_away(rfb.security_refusal(version, "too many viewers"), "too many viewers")
        reason = self.security.refusal(version)
        if reason:
            self.turn_away(rfb.security_refusal(version, reason), reason)
        types = self.security.types(version)
        self.sock.sendall(rfb.security_offer(version, types))
        chosen = types[0]
        if version != rfb.VERSION_3_3:
            chosen = rfb.parse_security_choice(self.recv_exactly(1), types)
        method = self.vencrypt() if chosen == SecurityType.VENCRYPT else chosen
        if method in (SecurityType.VNC_AUTHENTICATION, rfb.VeNCryptSubtype.X509_VNC):
            self.vnc_authentication(version)
        elif rfb.needs_security_result(version, chosen):
            self.sock.sendall(rfb.security_result(version, True))

    def vencrypt(self) -> int:
        """VeNCrypt 0.2 (docs/protocol.md): agree on a subtype, then TLS; return the subtype."""
        self.sock.sendall(rfb.VENCRYPT_VERSION)
        ack = rfb.vencrypt_version_ack(self.recv_exactly(2))
        self.sock.sendall(ack)
        if ack != rfb.VENCRYPT_OK:
            raise rfb.ProtocolError("viewer asked for a VeNCrypt version other than 0.2")
        subtypes = self.security.subtypes
        self.sock.sendall(rfb.vencrypt_subtypes(subtypes))
        chosen = rfb.parse_vencrypt_choice(self.recv_exactly(4), subtypes)
        self.sock.sendall(rfb.VENCRYPT_SUBTYPE_ACCEPTED)
        self.sock = self.security.tls.wrap_socket(
            self.sock, server_side=True, do_handshake_on_connect=False)
        self.sock.settimeout(self.time_left())
        try:
            self.sock.do_handshake()
        except ssl.SSLError as error:
            raise rfb.ProtocolError(f"TLS handshake failed: {error.reason or error}") from None
        return chosen

    def vnc_authentication(self, version: tuple[int, int]) -> None:
        """VNC authentication, §7.2.2, and its SecurityResult; the check waits for its turn."""
        challenge = auth.new_challenge()
        self.sock.sendall(challenge)
        response = self.recv_exactly(rfb.CHALLENGE_LENGTH)
        self.deadline += self.security.turns.wait()
        access = self.security.check(challenge, response)
        if access is None:
            time.sleep(auth.FAILURE_DELAY)
            failed = rfb.security_result(version, False, "authentication failed")
            self.turn_away(failed, "VNC authentication failed")
        self.view_only = access is auth.Access.VIEW_ONLY
        self.sock.sendall(rfb.security_result(version, True))

    def turn_away(self, message: bytes, reason: str) -> None:
        """Tell the viewer why, if it still listens; end the session with a logged refusal."""
        with contextlib.suppress(OSError):
            self.sock.sendall(message)
        raise auth.Refused(reason)

    def recv_exactly(self, size: int) -> bytes:
        return netio.recv_exactly(self.sock, size, self.deadline)

    def time_left(self) -> float:
        """Seconds until the handshake's deadline; past it the viewer is gone."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise netio.PeerGone("no answer before the handshake's deadline")
        return left

    # The session loop.

    def serve(self) -> None:
        self.sock.setblocking(False)
        self.token = None
        self.update_requested = False
        self.full_request = False
        self.announced = False
        self.desktop_size_reply = None
        self.cursor_sent = None
        self.seen_bells = self.display.bells
        self.seen_cut_text = self.display.cut_text[0]
        self.last_write = time.monotonic()
        self.display.listeners.add(self.poke)
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.closing:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
                selector.modify(self.sock, events)
                timeout = WRITE_STALL_TIMEOUT / 4 if self.outbox else None
                for key, mask in selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        # Drain first, then re-arm: a poke that lands in between finds
                        # _poked still set, but the change it announces is read below.
                        self._wake_r.recv(4096)
                        self._poked = False
                    elif mask & selectors.EVENT_READ:
                        self.receive()
                while self.events:
                    self.switch(*self.events.popleft())
                self.send_notifications()
                self.send_update()
                self.flush()

    def receive(self) -> None:
        more = True
        while more:
            try:
                data = self.sock.recv(65536)
            except WOULD_BLOCK:
                return
            if not data:
                raise ViewerGone("closed by the viewer")
            self.reader.feed(data)
            while (message := self.reader.next_message()) is not None:
                getattr(self, "on_" + type(message).__name__)(message)
            # TLS may hold decrypted bytes back, where select() cannot see them.
            more = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()

    def flush(self) -> None:
        """Write what the socket takes, a chunk at a time.

        A TLS write that would block must be retried with the same bytes; the outbox only
        grows at its end, so its first chunk stays the same until it has gone.
        """
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox[:SEND_CHUNK])
            except WOULD_BLOCK:
                sent = 0
            if not sent:
                break
            del self.outbox[:sent]
            self.last_write = time.monotonic()
        if self.outbox and time.monotonic() - self.last_write > WRITE_STALL_TIMEOUT:
            raise ViewerGone(f"not reading for {WRITE_STALL_TIMEOUT:.0f} s")
        if len(self.outbox) > HARD_OUTBOX:
            raise ViewerGone(f"{len(self.outbox)} bytes queued and not read")

    # The VT switch.

    @property
    def can_resize(self) -> bool:
        return self.encoder.supports(Encoding.EXTENDED_DESKTOP_SIZE) or self.encoder.supports(
            Encoding.DESKTOP_SIZE)

    def switch(self, event: str, desktop=None) -> None:
        """Move through the VT-switch table; show the display the new state names."""
        desktop = desktop or self.server.desktop
        state = vt.transition(self.state, event)
        if state == vt.DESKTOP and not self.can_show(desktop):
            state = vt.CONSOLE
        self.state = state
        target = desktop if state == vt.DESKTOP else self.server.console
        if target is not self.display:
            log.info("viewer %s: switched to the %s", self.peer,
                     "desktop" if target is desktop else "console")
            self.show(target)

    def can_show(self, desktop) -> bool:
        return desktop is not None and (self.can_resize or desktop.size == self.size)

    def show(self, display) -> None:
        self.release_input()
        self.display.listeners.discard(self.poke)
        self.display = display
        display.listeners.add(self.poke)
        self.token = None
        self.cursor_sent = None
        self.seen_bells = display.bells
        self.seen_cut_text = display.cut_text[0]

    def release_input(self) -> None:
        """Let go of every key and button held on the current display."""
        for keysym in self.held_keys:
            self.display.key(keysym, False, self.modifiers)
        self.held_keys = set()
        button_mask, x, y = self.pointer
        if button_mask:
            self.display.pointer(0, x, y)
        self.pointer = (0, x, y)

    # Client messages, RFC 6143 §7.5.

    def on_SetPixelFormat(self, message: rfb.SetPixelFormat) -> None:
        self.encoder.set_pixel_format(message.pixel_format)

    def on_SetEncodings(self, message: rfb.SetEncodings) -> None:
        self.encoder.set_encodings(message.encodings)

    def on_FramebufferUpdateRequest(self, message: rfb.FramebufferUpdateRequest) -> None:
        self.update_requested = True
        self.full_request = self.full_request or not message.incremental

    def on_KeyEvent(self, message: rfb.KeyEvent) -> None:
        keysym, down = message.keysym, message.down
        self.modifiers.update(keysym, down)
        event = vt.hotkey(keysym, self.modifiers.held, down)
        if event is not None:
            self.switch(event)
            return
        if down:
            if self.view_only:
                return
            self.held_keys.add(keysym)
        elif keysym in self.held_keys:
            self.held_keys.discard(keysym)
        else:
            return
        self.display.key(keysym, down, self.modifiers)

    def on_PointerEvent(self, message: rfb.PointerEvent) -> None:
        if self.view_only:
            return
        width, height = self.size
        x, y = min(message.x, width - 1), min(message.y, height - 1)
        self.pointer = (message.button_mask, x, y)
        self.display.pointer(message.button_mask, x, y)

    def on_ClientCutText(self, message: rfb.ClientCutText) -> None:
        if not self.view_only:
            self.display.paste(message.text)

    def on_SetDesktopSize(self, message: rfb.SetDesktopSize) -> None:
        self.desktop_size_reply = rfb.ExtendedDesktopSizeStatus.PROHIBITED

    # Server messages, RFC 6143 §7.6.

    def send_notifications(self) -> None:
        """Bell and clipboard from the display: they need no update request."""
        if self.display.bells != self.seen_bells:
            self.seen_bells = self.display.bells
            self.outbox += rfb.bell()
        serial, text = self.display.cut_text
        if serial != self.seen_cut_text:
            self.seen_cut_text = serial
            self.outbox += rfb.server_cut_text(text)

    def send_update(self) -> None:
        """Answer the pending update request, if there is one and something to send."""
        if not self.update_requested or len(self.outbox) > SOFT_OUTBOX:
            return
        pseudo = self.size_rects()
        if pseudo:
            self.outbox += rfb.framebuffer_update(pseudo)
        token = None if self.full_request else self.token
        same_size = self.display.size == self.size
        copy_rect = same_size and self.encoder.supports(Encoding.COPY_RECT)
        changes = self.display.changes(token, copy_rect)
        cursor = self.cursor_rect()
        if changes is None and not cursor:
            return
        rects = cursor
        if changes is not None:
            self.token = changes.token
            rects += self.encode(changes)
        self.outbox += rfb.framebuffer_update(rects)
        self.update_requested = False
        self.full_request = False

    def size_rects(self) -> list[bytes]:
        """Size announcements, which go in an update of their own (rfbproto §7.1)."""
        width, height = self.display.size
        extended = self.encoder.supports(Encoding.EXTENDED_DESKTOP_SIZE)
        if self.size != (width, height) and self.can_resize:
            self.size = (width, height)
            self.full_request = True
            self.announced = True
            if extended:
                return [rfb.extended_desktop_size(width, height, 0, 0)]
            return [rfb.desktop_size(width, height)]
        width, height = self.size
        if extended and not self.announced:
            self.announced = True
            return [rfb.extended_desktop_size(width, height, 0, 0)]
        if extended and self.desktop_size_reply is not None:
            status, self.desktop_size_reply = self.desktop_size_reply, None
            return [rfb.extended_desktop_size(width, height, 1, status)]
        return []

    def cursor_rect(self) -> list[bytes]:
        """The display's pointer shape, for a viewer that draws it itself (Cursor, -239)."""
        cursor = self.display.cursor
        if not self.encoder.supports(Encoding.CURSOR) or self.cursor_sent is (cursor or DOT_CURSOR):
            return []
        self.cursor_sent = cursor or DOT_CURSOR
        hot_x, hot_y, width, height, pixels, mask = (
            (cursor.hotspot_x, cursor.hotspot_y, cursor.width, cursor.height, cursor.pixels,
             cursor.mask) if cursor else DOT_CURSOR)
        image = Image.frombytes("RGB", (width, height), pixels, "raw", "BGRX")
        header = rfb.rect_header(hot_x, hot_y, width, height, Encoding.CURSOR)
        return [header + self.encoder.converter.convert(image) + mask]

    def encode(self, changes: damage.Changes) -> list[bytes]:
        """The update's rectangles in the viewer's encoding, fitted to its framebuffer."""
        width, height = self.size
        rects = []
        if changes.scroll:
            rects.append(self.encoder.copy_rect(
                0, 0, width, height - changes.scroll, 0, changes.scroll))
        tiles = changes.tiles
        if self.display.size != self.size:
            tiles = self.fit(tiles, changes.full)
        shared = (self.display.plans, changes.token)
        for x, y, tile in tiles:
            rects += self.encoder.encode(x, y, tile, shared)
        return rects

    def fit(self, tiles, full: bool):
        """Crop tiles to a viewer that could not follow a resize; black where nothing is."""
        width, height = self.size
        fitted = []
        for x, y, tile in tiles:
            area = damage.clip((x, y, *tile.size), width, height)
            if area:
                fitted.append((x, y, tile.crop((0, 0, area[2], area[3]))))
        if full:
            shown_width, shown_height = self.display.size
            for area in ((shown_width, 0, width - shown_width, height),
                         (0, shown_height, min(shown_width, width), height - shown_height)):
                area = damage.clip(area, width, height)
                if area:
                    fitted.append((area[0], area[1], Image.new("RGB", area[2:])))
        return fitted
