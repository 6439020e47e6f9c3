#!/usr/bin/env python3
"""vncterm: a text console served to any VNC viewer.

`python3 vncterm.py --domain N` (in Xen's dom0), `--pty PATH`, `--serial URL`, `--command CMD`,
or no source at all (the user's shell) renders a console as pixels and serves it over RFB.

The shape is CPython's socketserver: `Server` is a `ThreadingTCPServer` with the usual
lifecycle (`serve_forever`, `shutdown`, `server_close` joining the viewer threads), and each
viewer gets a `viewer.ViewerSession` thread.  The session does the handshake as straight-line
blocking code under a timeout (RFC 6143 §7.1-7.3, parsed by `rfb`), then runs a small event
loop on `selectors` over the viewer's socket and a wake-up socketpair that the console pokes
when something changed.  Writes are non-blocking into a per-viewer outbox: a viewer whose
outbox holds more than one frame gets no new updates until it drains, and one that stops
reading altogether is dropped past a hard limit or a stall timeout.  Nobody else notices.

A session never knows where pixels come from; it talks to a *display*:

    display.size                       (width, height) in pixels
    display.changes(token, copy_rect)  what changed since `token`: a damage.Changes, or None
    display.plans                      an encoders.SharedPlans: encoding work viewers share
    display.listeners                  callables to poke when something changed
    display.key(keysym, modifiers), display.pointer(mask, x, y), display.paste(text)
    display.bells                      a counter of terminal bells

`ConsoleDisplay` is the text console (console.py + render.py).  Damage is tracked once per
display (damage.py) in numbered generations; each viewer keeps only the number it last saw,
so viewers at different speeds share one rendering and a slow one simply gets a bigger,
merged update (RFB is pull-based: changes coalesce until the viewer asks again).  Viewers
that use the same encoding and pixel format share the analysis of each changed rectangle
too, and only run it through their own zlib streams (encoders.py).  Scrolls become CopyRect.
Every update request is served as if it covered the whole framebuffer: the viewers we know
all ask for the whole screen, and RFC 6143 §7.5.3 lets a server send more than was asked.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import socketserver
import sys
import threading

import auth
import console
import damage
import encoders
import keymap
import render
import service
import viewer
import vncproxy
import web
import xen

log = logging.getLogger("vncterm")

HANDSHAKE_TIMEOUT = 10.0
MAX_VIEWERS = 32
# Optional parts, each with add_arguments(parser) and start(args, server) -> something to stop().
FEATURES = (auth, vncproxy, web)
DESKTOP_NOTICE = "guest desktop up: Ctrl-Alt-F7 or Ctrl-Alt-7 shows it (viewers that can resize)"


# --- The text console as a display -----------------------------------------------------


class ConsoleDisplay:
    """The text console as a display: renders lazily, once for all viewers.

    A frame is rendered when a viewer asks and the console has told of changes since the last
    one (console.Console.told), so a flood is rendered at the console's pace, not once per
    viewer request, and viewers asking in between share one frame and its encoding.
    """

    def __init__(self, console_: console.Console, glyphs: render.Glyphs) -> None:
        self.console = console_
        self.renderer = render.Renderer(glyphs, console_.columns, console_.lines)
        self.size = self.renderer.size
        self.damage = damage.DamageLog(self.size)
        self.plans = encoders.SharedPlans()
        self.listeners = console_.listeners
        self._rendered = -1
        self.lock = threading.Lock()
        self.cursor = None
        self.cut_text = (0, b"")

    @property
    def bells(self) -> int:
        return self.console.bells

    def changes(self, token, copy_rect: bool = True) -> damage.Changes | None:
        with self.lock:
            if self.console.told != self._rendered:
                self._rendered = self.console.told
                frame = self.console.take_frame()
                if frame.scroll or frame.rows:
                    scroll, rects = self.renderer.apply(frame)
                    if scroll or rects:
                        self.damage.record(scroll, rects)
            return self.damage.changes(token, self.renderer.image, copy_rect)

    def key(self, keysym: int, down: bool, modifiers: keymap.Modifiers) -> None:
        if down and keysym not in keymap.MODIFIER_KEYSYMS:
            self.console.key(keysym, modifiers)

    def pointer(self, button_mask: int, x: int, y: int) -> None:
        self.console.pointer(button_mask)

    def paste(self, text: bytes) -> None:
        self.console.paste(text)


# --- The server ----------------------------------------------------------------------------


class Server(socketserver.ThreadingTCPServer):
    """Accepts viewers, one thread each, and knows them all and the displays they can show."""

    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's 5 overflowed in a connection flood
    daemon_threads = False
    block_on_close = True

    def __init__(self, address, console_display, name: str, max_viewers: int = MAX_VIEWERS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.console = console_display
        self.desktop = None
        self.name = name
        self.max_viewers = max_viewers
        self.handshake_timeout = handshake_timeout
        self.security = auth.Security()
        self.exit_when_idle = False
        self.sessions: set[viewer.ViewerSession] = set()
        self._sessions_lock = threading.Lock()
        super().__init__(address, viewer.ViewerSession)

    def desktop_changed(self, desktop) -> None:
        """The guest desktop came up, was replaced, or went (None): tell every viewer."""
        self.desktop = desktop
        self.console.console.set_notice(DESKTOP_NOTICE if desktop else "")
        event = vncproxy.DESKTOP_UP if desktop else vncproxy.DESKTOP_DOWN
        with self._sessions_lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.post(event, desktop)

    def add_session(self, session: viewer.ViewerSession) -> None:
        with self._sessions_lock:
            self.sessions.add(session)

    def remove_session(self, session: viewer.ViewerSession) -> None:
        with self._sessions_lock:
            self.sessions.discard(session)
            idle = not self.sessions
        if idle and self.exit_when_idle:
            self.stop_soon()

    def too_many(self, session: viewer.ViewerSession) -> bool:
        with self._sessions_lock:
            return len(self.sessions) > self.max_viewers

    def disconnect_others(self, keep: viewer.ViewerSession) -> None:
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
    source.add_argument("--domain", type=int, metavar="N",
                        help="Xen domain N's console, found in xenstore")
    source.add_argument("--pty", metavar="PATH", help="an existing pty or tty")
    source.add_argument("--serial", metavar="URL",
                        help="a serial port or pyserial URL (socket://, rfc2217://)")
    source.add_argument("--command", metavar="CMD", help="a command run in a new pty")
    parser.add_argument("--baud", type=int, default=115200, help="serial speed (115200)")
    parser.add_argument("--restart", action="store_true",
                        help="restart --command when it exits (otherwise exit)")
    parser.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                        help="address for viewers (127.0.0.1)")
    parser.add_argument("--port", type=int,
                        help="port for viewers (5900, or 5900+N with --domain; 0 picks one)")
    parser.add_argument("--size", type=parse_size, default=(80, 25), metavar="COLSxROWS",
                        help="console size (80x25)")
    parser.add_argument("--font", metavar="PATH", help="PSF, PCF, BDF or TrueType font")
    parser.add_argument("--log", metavar="FILE", help="append the raw console stream here")
    parser.add_argument("--max-viewers", type=int, default=MAX_VIEWERS, metavar="N",
                        help=f"simultaneous viewers ({MAX_VIEWERS})")
    parser.add_argument("--verbose", action="store_true", help="log every viewer event")
    for feature in FEATURES:
        feature.add_arguments(parser)
    service.add_arguments(parser)
    args = parser.parse_args(argv)
    service.check_arguments(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    return args


def make_source(args):
    """The console source the options ask for, and the desktop name that says what it is."""
    columns, lines = args.size
    if args.domain is not None:
        domain = xen.Domain(args.domain, xen.Xenstore(args.xenstore_prefix))
        return xen.DomainSource(domain), f"domain {args.domain}"
    if args.pty:
        return console.PtySource(args.pty), f"console {args.pty}"
    if args.serial:
        return console.SerialSource(args.serial, args.baud), f"serial {args.serial}"
    command = args.command or os.environ.get("SHELL") or "/bin/sh"
    source = console.CommandSource(command, columns, lines, restart=args.restart)
    return source, f"{command.split()[0]} on {socket.gethostname()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        service.setup_logging(args.verbose, args.syslog, args.log_file)
        font, font_name = render.load_font(args.font)
    except (OSError, render.FontError) as error:
        print(f"vncterm: {error}", file=sys.stderr)
        return 2
    log.info("font %s, cell %dx%d", font_name, *font.cell)
    source, name = make_source(args)
    dom0 = service.Service(args, source)
    try:
        return serve(args, source, name, font, dom0)
    finally:
        dom0.close()


def serve(args, source, name: str, font, dom0: service.Service) -> int:
    """Open the ports, drop root if asked, and serve until SIGTERM or the console's end."""
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
    started = []
    try:
        for feature in FEATURES:
            started.append(feature.start(args, server))
    except (OSError, ValueError) as error:
        print(f"vncterm: {error}", file=sys.stderr)
        for feature in reversed(started):
            feature.stop()
        server.server_close()
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop_soon())
    dom0.serving(server, next((f for f in started if isinstance(f, vncproxy.Desktops)), None))
    host, port = server.server_address[:2]
    print(f"vncterm: listening on {host}:{port}", flush=True)
    print(f"vncterm: serving {name!r}; connect with: vncviewer {host}::{port}", flush=True)
    term.start()
    try:
        server.serve_forever()
    finally:
        for feature in reversed(started):
            feature.stop()
        server.server_close()
        term.stop()
        if log_file:
            log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
