#!/usr/bin/env python3
"""vncterm: a text console served to any VNC viewer.

`python3 vncterm.py --domain N` (in Xen's dom0), `--pty PATH`, `--serial URL`, `--command CMD`,
or no source at all (the user's shell) renders a console as pixels and serves it over RFB.

This module is the program: its options, and `start`, which opens the ports and starts every
part in order, each with what it needs passed to its constructor.  Read `start` top to bottom
to see where each feature begins; `serve` then runs until SIGTERM or the console's end, and a
`contextlib.ExitStack` stops everything in the reverse order.  `--domain all` runs
`serve_host` instead: domains.py calls `start_console` (all of `start` but the browser relay)
once per domain, with that domain's options (`domain_args`), and webhost.py is the browser's.

The shape is CPython's socketserver: `Server` is a `ThreadingTCPServer` with the usual
lifecycle (`serve_forever`, `shutdown`, `server_close` joining the viewer threads), and each
viewer gets a `viewer.ViewerSession` thread: the handshake (RFC 6143 §7.1-7.3, parsed by
rfb.py, its security step decided by auth.py), then updates out and input in (§7.5-7.6), with
per-viewer flow control, so that a slow or stalled viewer affects only itself.

A session never knows where pixels come from: it shows a *display*, and display.py states that
interface as code (`display.Display`).  There are two: the text console (display.ConsoleDisplay,
drawing console.py's terminal with render.py) and the guest's desktop (vncproxy.DesktopDisplay,
a shadow of the guest's VNC server).  Which one a viewer shows is vt.py's table, moved by
Ctrl-Alt-F1 and Ctrl-Alt-F7.  Every update request is served as if it covered the whole
framebuffer: the viewers we know all ask for the whole screen, and RFC 6143 §7.5.3 lets a
server send more than was asked.

Where to read next: viewer.py (one viewer's session), display.py and damage.py (what it shows),
encoders.py (how pixels go on the wire), rfb.py (every message parsed and built), console.py
and render.py (the text console), vncproxy.py and rfbclient.py (the guest's desktop), auth.py
(who may connect), web.py (browsers), service.py, xen.py, roothelper.py, xenhost.py and
domains.py (running in dom0).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import socketserver
import sys
import threading

import auth
import console
import display
import domains
import render
import service
import sources
import viewer
import vncproxy
import vt
import web
import xen
import xenhost

log = logging.getLogger("vncterm")

HANDSHAKE_TIMEOUT = 10.0
MAX_VIEWERS = 32
DESKTOP_NOTICE = "guest desktop up: Ctrl-Alt-F7 or Ctrl-Alt-7 shows it (viewers that can resize)"


# --- The server ----------------------------------------------------------------------------


class Server(socketserver.ThreadingTCPServer):
    """Accepts viewers, one thread each, and knows them all and the displays they can show."""

    request_queue_size = 1024  # socketserver's 5 overflowed in a connection flood
    daemon_threads = False
    block_on_close = True

    def __init__(self, listener: socket.socket, console_display: display.ConsoleDisplay,
                 name: str, security: auth.Security | None = None,
                 max_viewers: int = MAX_VIEWERS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Serve viewers on `listener`, a socket from listen(); without `security`, anyone."""
        self.console = console_display
        self.desktop = None
        self.name = name
        self.max_viewers = max_viewers
        self.handshake_timeout = handshake_timeout
        self.security = security if security is not None else auth.Security()
        self.exit_when_idle = False
        self.sessions: set[viewer.ViewerSession] = set()
        self._sessions_lock = threading.Lock()
        super().__init__(listener.getsockname(), viewer.ViewerSession, bind_and_activate=False)
        # socketserver made a socket of its own to bind; ours is bound and listening already.
        self.socket.close()
        self.socket = listener

    def desktop_changed(self, desktop) -> None:
        """The guest desktop came up, was replaced, or went (None): tell every viewer."""
        self.desktop = desktop
        self.console.console.set_notice(DESKTOP_NOTICE if desktop else "")
        event = vt.DESKTOP_UP if desktop else vt.DESKTOP_DOWN
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

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """socketserver's loop, asleep until a viewer connects or shutdown() wakes it: no
        timer wakes an idle server (socketserver's default looks twice a second)."""
        super().serve_forever(poll_interval)

    def shutdown(self) -> None:
        """socketserver's shutdown, for a loop that sleeps without a timeout: once the stop is
        asked for, shutting the listening socket down wakes its select()."""
        stopping = threading.Thread(target=super().shutdown)
        stopping.start()
        # If the wake-up comes before socketserver has set its flag, the loop's accept fails
        # (EINVAL, which socketserver ignores) and it looks again until the flag is set.
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        stopping.join()

    def server_close(self) -> None:
        self.socket.close()
        with self._sessions_lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.close()
        super().server_close()


def listen(host: str, port: int) -> socket.socket:
    """The viewer port, bound and listening as socketserver would (IPv4, SO_REUSEADDR)."""
    sock = socket.socket(Server.address_family, Server.socket_type)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(Server.request_queue_size)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error}") from None
    return sock


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
    source.add_argument("--domain", type=service.domain_option, metavar="N",
                        help="Xen domain N's console, found in xenstore; 'all' serves every "
                             "domain but dom0, domain N on the ports' bases + N")
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
                        help="port for viewers (5900, or 5900+N with --domain; 0 picks one; "
                             "the base with --domain all)")
    parser.add_argument("--size", type=parse_size, default=(80, 25), metavar="COLSxROWS",
                        help="console size (80x25)")
    parser.add_argument("--font", metavar="PATH", help="PSF, PCF, BDF or TrueType font")
    parser.add_argument("--log", metavar="FILE", help="append the raw console stream here")
    parser.add_argument("--max-viewers", type=int, default=MAX_VIEWERS, metavar="N",
                        help=f"simultaneous viewers ({MAX_VIEWERS})")
    parser.add_argument("--verbose", action="store_true", help="log every viewer event")
    auth.add_arguments(parser)
    vncproxy.add_arguments(parser)
    web.add_arguments(parser)
    service.add_arguments(parser)
    args = parser.parse_args(argv)
    service.check_arguments(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    return args


def make_source(args, dom0: service.Service, adverts: dict[str, str], leave):
    """The console source the options ask for, and the desktop name that says what it is.

    A domain's source publishes `adverts` (where we listen) and calls `leave()` when the
    domain is gone; the other sources have neither.
    """
    columns, lines = args.size
    if args.domain is not None:
        return dom0.source(adverts, leave), f"domain {args.domain}"
    if args.pty:
        return sources.PtySource(args.pty), f"console {args.pty}"
    if args.serial:
        return sources.SerialSource(args.serial, args.baud), f"serial {args.serial}"
    command = args.command or os.environ.get("SHELL") or "/bin/sh"
    source = sources.CommandSource(command, columns, lines, restart=args.restart)
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
    dom0 = service.Service(args)
    try:
        if args.domain == xenhost.ALL:
            return serve_host(args, font, dom0)
        return serve(args, font, dom0)
    finally:
        dom0.close()


def serve(args, font, dom0: service.Service) -> int:
    """Start everything, serve until SIGTERM or the console's end, then stop it all."""
    with contextlib.ExitStack() as stops:
        try:
            server, term = start(args, font, dom0, stops)
        except (OSError, ValueError) as error:
            print(f"vncterm: {error}", file=sys.stderr)
            return 1
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: server.stop_soon())
        dom0.drop_root()
        host, port = server.server_address[:2]
        print(f"vncterm: listening on {host}:{port}", flush=True)
        print(f"vncterm: serving {server.name!r}; connect with: vncviewer {host}::{port}",
              flush=True)
        term.start()
        stops.callback(term.stop)
        server.serve_forever()
    return 0


def serve_host(args, font, dom0: service.Service) -> int:
    """--domain all: serve every domain (domains.py) and the host's browser page, until SIGTERM."""
    with contextlib.ExitStack() as stops:
        try:
            host = domains.Domains(
                dom0, lambda number, plumbing, stops: start_console(
                    domain_args(args, number), font, plumbing, stops))
            relay = web.start_host(args, host)
        except (OSError, ValueError) as error:
            print(f"vncterm: {error}", file=sys.stderr)
            return 1
        if relay is not None:
            stops.callback(relay.stop)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: host.stop())
        dom0.drop_root()
        print(f"vncterm: serving every domain of {socket.gethostname()}: domain N on "
              f"{args.listen}:{args.port}+N", flush=True)
        host.serve()
    return 0


def domain_args(args, number: int) -> argparse.Namespace:
    """--domain all's options as `--domain number` would have them: its own ports, base+N."""
    return argparse.Namespace(**{**vars(args), "domain": number, "port": args.port + number,
                                 "reverse_port": args.reverse_port + number})


def start(args, font, dom0: service.Service,
          stops: contextlib.ExitStack) -> tuple[Server, console.Console]:
    """Open the ports and make every part, in order; push onto `stops` how to stop each.

    The console is made but not started: it starts last, once root is dropped (serve).
    """
    server, term = start_console(args, font, dom0, stops)
    relay = web.start(args, server.server_address)
    if relay is not None:
        stops.callback(relay.stop)
    return server, term


def start_console(args, font, dom0: service.DomainService,
                  stops: contextlib.ExitStack) -> tuple[Server, console.Console]:
    """Everything start() makes but the browser relay: one console's ports and parts."""
    log_file = stops.enter_context(open(args.log, "ab")) if args.log else None
    viewers = listen(args.listen, args.port)
    stops.callback(viewers.close)
    security = auth.start(args, viewers.getsockname())
    desktop_password = vncproxy.read_password(args.desktop_password_file)
    guests = vncproxy.listen(args)
    if guests is not None:
        stops.callback(guests.close)
    reverse = guests.getsockname()[:2] if guests is not None else None
    adverts = xen.adverts(viewers.getsockname()[1], reverse)
    # The console and the domain tell the server when they end; neither can end before the
    # console starts, and the server exists by then.
    source, name = make_source(args, dom0, adverts, lambda: service.leave(server))
    columns, lines = args.size
    term = console.Console(source, columns, lines, log_file=log_file,
                           on_closed=lambda: server.console_closed())
    console_display = display.ConsoleDisplay(term, render.glyphs_for(font))
    server = Server(viewers, console_display, name, security, max_viewers=args.max_viewers)
    stops.callback(server.server_close)
    desktops = vncproxy.start(args, guests, desktop_password, server.desktop_changed,
                              dom0.reverse_allow(source), dom0.device_model(source))
    stops.callback(desktops.stop)
    return server, term


if __name__ == "__main__":
    sys.exit(main())
