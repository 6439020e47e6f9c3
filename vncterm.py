#!/usr/bin/env python3
"""vncterm: a text console served to any VNC viewer.

`python3 vncterm.py --domain N` (in Xen's dom0), `--pty PATH`, `--serial URL`, `--command CMD`,
or no source at all (the user's shell) renders a console as pixels and serves it over RFB.

The shape is CPython's socketserver: `Server` is a `ThreadingTCPServer` with the usual
lifecycle (`serve_forever`, `shutdown`, `server_close` joining the viewer threads), and each
viewer gets a `ViewerSession` thread.  The session does the handshake as straight-line
blocking code under a timeout (RFC 6143 §7.1-7.3, parsed by `rfb`), then runs a small event
loop on `selectors` over the viewer's socket and a wake-up socketpair that the console pokes
when something changed.  Writes are non-blocking into a per-viewer outbox: a viewer whose
outbox holds more than one frame gets no new updates until it drains, and one that stops
reading altogether is dropped past a hard limit or a stall timeout.  Nobody else notices.

A session never knows where pixels come from; it talks to a *display*:

    display.size                       (width, height) in pixels
    display.changes(token, copy_rect)  what changed since `token`: a damage.Changes, or None
    display.listeners                  callables to poke when something changed
    display.key(keysym, modifiers), display.pointer(mask, x, y), display.paste(text)
    display.bells                      a counter of terminal bells

`ConsoleDisplay` is the text console (console.py + render.py).  Damage is tracked once per
display (damage.py) in numbered generations; each viewer keeps only the number it last saw,
so viewers at different speeds share one rendering and a slow one simply gets a bigger,
merged update (RFB is pull-based: changes coalesce until the viewer asks again).  Scrolls
become CopyRect.  Every update request is served as if it covered the whole framebuffer: the
viewers we know all ask for the whole screen, and RFC 6143 §7.5.3 lets a server send more
than was asked.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time

import console
import damage
import encoders
import keymap
import render
import rfb
from rfb import Encoding

log = logging.getLogger("vncterm")

SOFT_OUTBOX = 256 * 1024
HARD_OUTBOX = 8 * 1024 * 1024
WRITE_STALL_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 10.0
MAX_VIEWERS = 32


# --- The text console as a display -----------------------------------------------------


class ConsoleDisplay:
    """The text console as a display: renders lazily, once for all viewers."""

    def __init__(self, console_: console.Console, glyphs: render.Glyphs) -> None:
        self.console = console_
        self.renderer = render.Renderer(glyphs, console_.columns, console_.lines)
        self.size = self.renderer.size
        self.damage = damage.DamageLog(self.size)
        self.listeners = console_.listeners
        self.lock = threading.Lock()

    @property
    def bells(self) -> int:
        return self.console.bells

    def changes(self, token, copy_rect: bool = True) -> damage.Changes | None:
        with self.lock:
            frame = self.console.take_frame()
            if frame.scroll or frame.rows:
                scroll, rects = self.renderer.apply(frame)
                if scroll or rects:
                    self.damage.record(scroll, rects)
            return self.damage.changes(token, self.renderer.image, copy_rect)

    def key(self, keysym: int, modifiers: keymap.Modifiers) -> None:
        self.console.key(keysym, modifiers)

    def pointer(self, button_mask: int, x: int, y: int) -> None:
        self.console.pointer(button_mask)

    def paste(self, text: bytes) -> None:
        self.console.paste(text)


# --- A viewer ----------------------------------------------------------------------------


class ViewerGone(Exception):
    """The viewer closed its connection or stopped reading; nothing to report."""


class ViewerSession(socketserver.BaseRequestHandler):
    """One viewer: the handshake, then updates out and input in until it leaves."""

    def setup(self) -> None:
        self.peer = "%s:%s" % self.client_address[:2]
        self.sock = self.request
        self.display = self.server.display
        self.encoder = encoders.ViewerEncoder()
        self.reader = rfb.ClientReader()
        self.modifiers = keymap.Modifiers()
        self.outbox = bytearray()
        self.closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._poked = False
        self.server.add_session(self)

    def handle(self) -> None:
        try:
            self.handshake()
            log.info("viewer %s connected", self.peer)
            self.serve()
        except rfb.ProtocolError as error:
            log.warning("viewer %s: protocol error: %s", self.peer, error)
        except (ViewerGone, OSError) as error:
            log.info("viewer %s: gone (%s)", self.peer, error or "closed")
        except Exception:
            log.exception("viewer %s: internal error", self.peer)

    def finish(self) -> None:
        self.display.listeners.discard(self.poke)
        self.server.remove_session(self)
        self._wake_r.close()
        self._wake_w.close()
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
        """Something changed on the display (called from other threads)."""
        if not self._poked:
            self._poked = True
            try:
                self._wake_w.send(b"!")
            except OSError:
                pass

    # The handshake, RFC 6143 §7.1-7.3: the program counter is the state.

    def recv_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ViewerGone("closed during the handshake")
            data += chunk
        return bytes(data)

    def handshake(self) -> None:
        self.sock.settimeout(self.server.handshake_timeout)
        self.sock.sendall(rfb.SERVER_VERSION)
        version = rfb.parse_client_version(self.recv_exactly(rfb.VERSION_LENGTH))
        if self.server.too_many(self):
            self.sock.sendall(rfb.security_refusal(version, "too many viewers"))
            raise ViewerGone("refused: too many viewers")
        types = self.server.security_types
        self.sock.sendall(rfb.security_offer(version, types))
        chosen = types[0]
        if version != rfb.VERSION_3_3:
            chosen = rfb.parse_security_choice(self.recv_exactly(1), types)
        if rfb.needs_security_result(version, chosen):
            self.sock.sendall(rfb.security_result(version, True))
        if not rfb.parse_client_init(self.recv_exactly(1)):
            self.server.disconnect_others(self)
        self.size = width, height = self.display.size
        pixel_format = rfb.DEFAULT_PIXEL_FORMAT
        self.sock.sendall(rfb.server_init(width, height, pixel_format, self.server.name))

    # The session loop.

    def serve(self) -> None:
        self.sock.setblocking(False)
        self.token = None
        self.update_requested = False
        self.full_request = False
        self.announced = False
        self.desktop_size_reply = None
        self.bells = self.display.bells
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
                        self._poked = False
                        self._wake_r.recv(4096)
                    elif mask & selectors.EVENT_READ:
                        self.receive()
                self.send_bells()
                self.send_update()
                self.flush()

    def receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            raise ViewerGone("closed by the viewer")
        self.reader.feed(data)
        while (message := self.reader.next_message()) is not None:
            self.dispatch(message)

    def dispatch(self, message) -> None:
        handler = getattr(self, "on_" + type(message).__name__)
        handler(message)

    def flush(self) -> None:
        if self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                sent = 0
            if sent:
                del self.outbox[:sent]
                self.last_write = time.monotonic()
            elif time.monotonic() - self.last_write > WRITE_STALL_TIMEOUT:
                raise ViewerGone(f"not reading for {WRITE_STALL_TIMEOUT:.0f} s")
        if len(self.outbox) > HARD_OUTBOX:
            raise ViewerGone(f"{len(self.outbox)} bytes queued and not read")

    # Client messages, RFC 6143 §7.5.

    def on_SetPixelFormat(self, message: rfb.SetPixelFormat) -> None:
        self.encoder.set_pixel_format(message.pixel_format)

    def on_SetEncodings(self, message: rfb.SetEncodings) -> None:
        self.encoder.set_encodings(message.encodings)

    def on_FramebufferUpdateRequest(self, message: rfb.FramebufferUpdateRequest) -> None:
        self.update_requested = True
        self.full_request = self.full_request or not message.incremental

    def on_KeyEvent(self, message: rfb.KeyEvent) -> None:
        if self.modifiers.update(message.keysym, message.down) or not message.down:
            return
        self.display.key(message.keysym, self.modifiers)

    def on_PointerEvent(self, message: rfb.PointerEvent) -> None:
        width, height = self.size
        x, y = min(message.x, width - 1), min(message.y, height - 1)
        self.display.pointer(message.button_mask, x, y)

    def on_ClientCutText(self, message: rfb.ClientCutText) -> None:
        self.display.paste(message.text)

    def on_SetDesktopSize(self, message: rfb.SetDesktopSize) -> None:
        self.desktop_size_reply = rfb.ExtendedDesktopSizeStatus.PROHIBITED

    # Server messages, RFC 6143 §7.6.

    def send_bells(self) -> None:
        bells = self.display.bells
        if bells != self.bells:
            self.bells = bells
            self.outbox += rfb.bell()

    def send_update(self) -> None:
        """Answer the pending update request, if there is one and something to send."""
        if not self.update_requested or len(self.outbox) > SOFT_OUTBOX:
            return
        pseudo = self.pseudo_rects()
        if pseudo:
            self.outbox += rfb.framebuffer_update(pseudo)
        token = None if self.full_request else self.token
        changes = self.display.changes(token, self.encoder.supports(Encoding.COPY_RECT))
        if changes is None:
            return
        self.token = changes.token
        rects = self.encode(changes)
        if not rects:
            return
        self.outbox += rfb.framebuffer_update(rects)
        self.update_requested = False
        self.full_request = False

    def pseudo_rects(self) -> list[bytes]:
        """Size announcements, which go in an update of their own (rfbproto §7.1)."""
        width, height = self.display.size
        extended = self.encoder.supports(Encoding.EXTENDED_DESKTOP_SIZE)
        if self.size != (width, height):
            self.size = (width, height)
            self.full_request = True
            if extended:
                return [rfb.extended_desktop_size(width, height, 0, 0)]
            return [rfb.desktop_size(width, height)]
        if extended and not self.announced:
            self.announced = True
            return [rfb.extended_desktop_size(width, height, 0, 0)]
        if extended and self.desktop_size_reply is not None:
            status, self.desktop_size_reply = self.desktop_size_reply, None
            return [rfb.extended_desktop_size(width, height, 1, status)]
        return []

    def encode(self, changes: damage.Changes) -> list[bytes]:
        width, height = self.size
        rects = []
        if changes.scroll:
            rects.append(self.encoder.copy_rect(
                0, 0, width, height - changes.scroll, 0, changes.scroll))
        for x, y, tile in changes.tiles:
            rects += self.encoder.encode(x, y, tile)
        return rects


# --- The server ----------------------------------------------------------------------------


class Server(socketserver.ThreadingTCPServer):
    """Accepts viewers, one thread each, and knows them all."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, address, display, name: str, max_viewers: int = MAX_VIEWERS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.display = display
        self.name = name
        self.max_viewers = max_viewers
        self.handshake_timeout = handshake_timeout
        self.security_types = [rfb.SecurityType.NONE]
        self.exit_when_idle = False
        self.sessions: set[ViewerSession] = set()
        self._sessions_lock = threading.Lock()
        super().__init__(address, ViewerSession)

    def add_session(self, session: ViewerSession) -> None:
        with self._sessions_lock:
            self.sessions.add(session)

    def remove_session(self, session: ViewerSession) -> None:
        with self._sessions_lock:
            self.sessions.discard(session)
            idle = not self.sessions
        if idle and self.exit_when_idle:
            self.stop_soon()

    def too_many(self, session: ViewerSession) -> bool:
        with self._sessions_lock:
            return len(self.sessions) > self.max_viewers

    def disconnect_others(self, keep: ViewerSession) -> None:
        """A viewer asked for exclusive access (ClientInit shared-flag 0)."""
        with self._sessions_lock:
            others = [s for s in self.sessions if s is not keep]
        for session in others:
            log.info("viewer %s: disconnected for an exclusive viewer", session.peer)
            session.close()

    def console_closed(self) -> None:
        """The console's source ended for good: leave once nobody is watching."""
        self.exit_when_idle = True
        with self._sessions_lock:
            idle = not self.sessions
        if idle:
            self.stop_soon()

    def stop_soon(self) -> None:
        threading.Thread(target=self.shutdown, daemon=True).start()

    def server_close(self) -> None:
        self.socket.close()
        with self._sessions_lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.close()
        super().server_close()


# --- Command line --------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        columns, lines = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLUMNSxROWS, got {text!r}") from None
    if not (2 <= columns <= 1000 and 2 <= lines <= 500):
        raise argparse.ArgumentTypeError(f"size {text} is out of range (2x2 to 1000x500)")
    return columns, lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vncterm.py", description="Serve a text console to VNC viewers.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--domain", type=int, metavar="N", help="Xen domain N's console")
    source.add_argument("--pty", metavar="PATH", help="an existing pty or tty")
    source.add_argument("--serial", metavar="URL",
                        help="a serial port or pyserial URL (socket://, rfc2217://)")
    source.add_argument("--command", metavar="CMD", help="a command run in a new pty")
    parser.add_argument("--baud", type=int, default=115200, help="serial speed (115200)")
    parser.add_argument("--restart", action="store_true",
                        help="restart --command when it exits (otherwise exit)")
    parser.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                        help="address for viewers (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5900,
                        help="port for viewers (5900; 0 picks a free one)")
    parser.add_argument("--size", type=parse_size, default=(80, 25), metavar="COLSxROWS",
                        help="console size (80x25)")
    parser.add_argument("--font", metavar="PATH", help="PSF, PCF, BDF or TrueType font")
    parser.add_argument("--log", metavar="FILE", help="append the raw console stream here")
    parser.add_argument("--max-viewers", type=int, default=MAX_VIEWERS, metavar="N",
                        help=f"simultaneous viewers ({MAX_VIEWERS})")
    parser.add_argument("--verbose", action="store_true", help="log every viewer event")
    args = parser.parse_args(argv)
    if args.domain is not None:
        parser.error("--domain needs the Xen integration, which is not built yet")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    return args


def make_source(args):
    """The console source the options ask for, and the desktop name that says what it is."""
    columns, lines = args.size
    if args.pty:
        return console.PtySource(args.pty), f"console {args.pty}"
    if args.serial:
        return console.SerialSource(args.serial, args.baud), f"serial {args.serial}"
    command = args.command or os.environ.get("SHELL") or "/bin/sh"
    source = console.CommandSource(command, columns, lines, restart=args.restart)
    return source, f"{command.split()[0]} on {socket.gethostname()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s")
    try:
        font, font_name = render.load_font(args.font)
    except render.FontError as error:
        print(f"vncterm: {error}", file=sys.stderr)
        return 2
    log.info("font %s, cell %dx%d", font_name, *font.cell)
    source, name = make_source(args)
    log_file = open(args.log, "ab") if args.log else None
    columns, lines = args.size
    term = console.Console(source, columns, lines, log_file=log_file)
    display = ConsoleDisplay(term, render.Glyphs(font))
    try:
        server = Server((args.listen, args.port), display, name, max_viewers=args.max_viewers)
    except OSError as error:
        print(f"vncterm: cannot listen on {args.listen}:{args.port}: {error}", file=sys.stderr)
        return 1
    term.on_closed = server.console_closed
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop_soon())
    host, port = server.server_address[:2]
    print(f"vncterm: listening on {host}:{port}", flush=True)
    print(f"vncterm: serving {name!r}; connect with: vncviewer {host}::{port}", flush=True)
    term.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        term.stop()
        if log_file:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
