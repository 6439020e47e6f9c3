"""One viewer's session: the handshake, then updates out and input in, and the VT switch.

`ViewerSession` is a socketserver request handler, so each viewer has a thread of its own.
The handshake (RFC 6143 §7.1-7.3) is straight-line blocking code with one deadline for all of
it (a shorter one for the viewer's version, and moved by a password check's wait for its
turn), each step parsed by rfb.py and the security step decided by auth.py: the program
counter is the state.  With VeNCrypt the socket is swapped for a TLS one half-way through, so the
session reads and writes `self.sock` and treats TLS's "want read/write" like "would block".
After ServerInit the session runs a small event loop on `selectors` over the viewer's socket
and a `netio.Wakeup`.  Displays poke the wake-up when their picture changed, and the server
posts desktop up/down events.

Updates.  What to send, and when, is updates.py's, which is sans-IO: an `updates.Updates` for
the display the viewer sees (a new one on every VT switch) decides each frame, and the
session's `updates.Outbox` takes it band by band while the queue is short and says when a
viewer that does not read must go.  The session only moves the outbox's bytes into the
non-blocking socket, so no viewer can hold up the console, the guest or another viewer.

The VT switch.  A session shows one *display* at a time, the text console or the guest
desktop (display.py states the interface), and its state follows the table in vt.py.
Switching releases every key and button still held on the display being left and drops
key releases for keys pressed on the other one, so no key is stuck anywhere; then
the viewer is resized (ExtendedDesktopSize where it listed it, else DesktopSize) and
repainted in full.  A viewer that listed neither cannot be resized: it stays on the console
(whose status line says why) unless the desktop happens to be its size; if it started on the
desktop and the desktop goes, it sees the console in the top-left corner of its framebuffer.

The clipboard.  Each session keeps a clipboard.ClipboardLink towards its viewer (plain cut
text, or the Extended Clipboard once the viewer listed it and got our caps).  What the viewer
copies is kept there and only typed when the person pastes (vt.pastes, or the console's middle
button); the desktop also hands it on to the guest.  A `clipboard.Hand` carries the link, the
modifiers and the buttons to the display's pointer, which copies a console selection into it.

A viewer's SetDesktopSize goes to the display it shows, whose answer, maybe later and from
another thread, comes back through `resize_answers` to go out with the next update.

Keys and pointer.  Keys come as keysyms (KeyEvent) or, from a viewer invited to (a desktop
whose QEMU takes them, rfbproto's -258), as QEMU Extended Key Events that carry the scancode
too.  Hotkeys are found by keysym in either.  A scancode goes to a display that takes scancodes
untouched, so the guest's own keyboard layout applies; anywhere else its keysym is used, since
RFB cannot withdraw the invitation once given.  The pointer is absolute unless the display asked
for relative motion (-257), which a viewer that listed -257 then sends itself and for any other
the session works out from its positions.

A viewer that gave the view-only password watches only: its keys, pointer and clipboard go
nowhere (the VT-switch hotkeys still move its own view) and it cannot ask for exclusive access
or for a new size.
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

import auth
import clipboard
import encoders
import keymap
import netio
import rfb
import updates
import vt
from rfb import SecurityType
from updates import ViewerGone

log = logging.getLogger("vncterm")

SEND_CHUNK = 64 * 1024
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


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
        self.hand = clipboard.Hand(self.modifiers, clipboard.viewer_link())
        self.outbox = updates.Outbox()
        self.events: collections.deque = collections.deque()
        self.held_keys: dict[tuple[str, int], tuple[int, int | None]] = {}
        self.pointer = (0, 0, 0)
        self.resize_answers: collections.deque = collections.deque()
        self.closing = False
        self.wakeup = netio.Wakeup()
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
        self.display.listeners.discard(self.wakeup.poke)
        self.server.remove_session(self)
        self.wakeup.close()
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

    def post(self, event: str, display) -> None:
        """A desktop came or went (called from other threads)."""
        self.events.append((event, display))
        self.wakeup.poke()

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
        self.updates = updates.Updates(self.display, self.encoder, self.display.size,
                                       self.hand.clipboard)
        width, height = self.updates.size
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
        self.display.listeners.add(self.wakeup.poke)
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self.wakeup, selectors.EVENT_READ)
            while not self.closing:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
                selector.modify(self.sock, events)
                timeout = updates.WRITE_STALL_TIMEOUT / 4 if self.outbox else None
                for key, mask in selector.select(timeout):
                    if key.fileobj is self.wakeup:
                        # Drain first, then look: a poke that lands in between wakes the
                        # selector once more, but the change it announces is read below.
                        self.wakeup.drain()
                    elif mask & selectors.EVENT_READ:
                        self.receive()
                while self.events:
                    self.switch(*self.events.popleft())
                while self.resize_answers:
                    self.updates.answer_resize(self.resize_answers.popleft())
                self.outbox.add(self.hand.clipboard.take() + self.updates.notifications())
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
        """Write what the socket takes, a chunk at a time, topping the outbox up with the
        update in progress as it drains; drop a viewer that does not read.

        A TLS write that would block must be retried with the same bytes; the outbox only
        grows at its end, so its head stays the same until it has gone.
        """
        while True:
            self.outbox.fill(self.updates)
            if not self.outbox:
                break
            try:
                sent = self.sock.send(self.outbox.head(SEND_CHUNK))
            except WOULD_BLOCK:
                sent = 0
            if not sent:
                break
            self.outbox.sent(sent)
        self.outbox.check()

    # The VT switch.

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
        return desktop is not None and (self.updates.can_resize
                                        or desktop.size == self.updates.size)

    def show(self, display) -> None:
        self.release_input()
        self.display.listeners.discard(self.wakeup.poke)
        self.display = display
        display.listeners.add(self.wakeup.poke)
        self.updates = self.updates.switched(display)

    def release_input(self) -> None:
        """Let go of every key and button held on the current display, keys in the form
        (scancode or keysym) they were pressed in."""
        for keysym, keycode in self.held_keys.values():
            self.send_key(False, keysym, keycode)
        self.held_keys = {}
        button_mask, x, y = self.pointer
        if button_mask:
            if self.display.absolute_pointer:
                self.display.pointer(0, x, y, self.hand)
            else:
                self.display.pointer_motion(0, 0, 0)
        self.pointer = (0, x, y)
        self.hand.buttons = 0

    # Client messages, RFC 6143 §7.5.

    def on_SetPixelFormat(self, message: rfb.SetPixelFormat) -> None:
        self.encoder.set_pixel_format(message.pixel_format)

    def on_SetEncodings(self, message: rfb.SetEncodings) -> None:
        self.encoder.set_encodings(message.encodings)
        link = self.hand.clipboard
        if rfb.Encoding.EXTENDED_CLIPBOARD in message.encodings and not link.sent_caps:
            self.reader.extended_clipboard = True
            self.outbox.add(link.offer())

    def on_FramebufferUpdateRequest(self, message: rfb.FramebufferUpdateRequest) -> None:
        self.updates.request(message.incremental)

    def on_KeyEvent(self, message: rfb.KeyEvent) -> None:
        self.key(message.down, message.keysym, None)

    def on_QemuExtendedKeyEvent(self, message: rfb.QemuExtendedKeyEvent) -> None:
        self.key(message.down, message.keysym, message.keycode or None)

    def key(self, down: bool, keysym: int, keycode: int | None) -> None:
        """A key from either kind of key event: hotkeys by keysym, the rest to the display.

        A key is known by its scancode where it has one, since its keysym may change while
        it is held (Shift let go first).  It goes out as its scancode where the display takes
        scancodes when it is pressed, and its repeats and release go out in that same form.
        """
        self.modifiers.update(keysym, down)
        event = vt.hotkey(keysym, self.modifiers.held, down)
        if event is not None:
            self.switch(event)
            return
        if down and vt.pastes(keysym, self.modifiers.held, self.display is self.server.console):
            if not self.view_only:
                self.paste()
            return
        held = ("scancode", keycode) if keycode else ("keysym", keysym)
        if down:
            if self.view_only:
                return
            scancode = keycode if self.display.extended_keys else None
            keysym, keycode = self.held_keys.setdefault(held, (keysym, scancode))
        elif held in self.held_keys:
            keysym, keycode = self.held_keys.pop(held)
        else:
            return
        self.send_key(down, keysym, keycode)

    def send_key(self, down: bool, keysym: int, keycode: int | None) -> None:
        """As a scancode if there is one, else as a keysym if the viewer knew one (noVNC sends
        keysym 0 for a key it cannot name)."""
        if keycode:
            self.display.extended_key(keysym, keycode, down, self.modifiers)
        elif keysym:
            self.display.key(keysym, down, self.modifiers)

    def on_PointerEvent(self, message: rfb.PointerEvent) -> None:
        """Absolute positions, clipped; or, where the display wants relative motion, the
        viewer's own motion if it was told to send that (-257), else the distance moved."""
        if self.view_only:
            return
        if self.display.absolute_pointer:
            width, height = self.updates.size
            x, y = min(message.x, width - 1), min(message.y, height - 1)
            self.display.pointer(message.button_mask, x, y, self.hand)
        else:
            _, x, y = self.pointer
            if self.updates.pointer_absolute is False:
                dx, dy = (value - rfb.POINTER_RELATIVE_ORIGIN for value in (message.x, message.y))
            else:
                dx, dy = message.x - x, message.y - y
                x, y = message.x, message.y
            self.display.pointer_motion(message.button_mask, dx, dy)
        self.pointer = (message.button_mask, x, y)
        self.hand.buttons = message.button_mask

    def on_ClientCutText(self, message: rfb.ClientCutText) -> None:
        """The viewer's clipboard: kept, never typed until the person pastes (issue 14)."""
        if not self.view_only:
            self.hand.clipboard.receive_plain(message.text)
            self.clipboard_changed()

    def on_ExtendedClipboard(self, message: rfb.ExtendedClipboard) -> None:
        link = self.hand.clipboard
        received = link.received
        answer, changed = link.receive(message)
        self.outbox.add(answer)
        if self.view_only:
            link.received = received
        elif changed:
            self.clipboard_changed()

    def clipboard_changed(self) -> None:
        text = self.hand.clipboard.received
        log.info("viewer %s: clipboard of %d characters kept for pasting", self.peer, len(text))
        self.display.clipboard(text)

    def paste(self) -> None:
        """Type the viewer's clipboard into the display, with no modifier held there."""
        for held, (keysym, keycode) in list(self.held_keys.items()):
            if keysym in keymap.MODIFIER_KEYSYMS:
                self.send_key(False, keysym, keycode)
                del self.held_keys[held]
        self.display.paste(self.hand)

    def on_SetDesktopSize(self, message: rfb.SetDesktopSize) -> None:
        if self.view_only:
            self.updates.answer_resize(rfb.ExtendedDesktopSizeStatus.PROHIBITED)
            return
        self.updates.ask_resize()
        self.display.resize(message.width, message.height, self.resize_answered)

    def resize_answered(self, status: int) -> None:
        """The display's answer to our SetDesktopSize (from any thread)."""
        self.resize_answers.append(status)
        self.wakeup.poke()
