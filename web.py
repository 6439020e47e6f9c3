"""The browser console: noVNC's page and a WebSocket relay to our own viewer port.

`--web PORT` lets anyone with a browser use the console: vncterm prints a URL such as
`http://127.0.0.1:6080/vnc.html?autoconnect=1`, and the page (noVNC, a VNC viewer written in
JavaScript) connects back over a WebSocket.  websockify serves noVNC's files and relays each
WebSocket to vncterm's ordinary viewer port, so a browser is just one more viewer: the same
encodings, limits, hotkeys and authentication as TigerVNC or gtk-vnc.

How it runs.  vncterm binds the web port itself and hands the listening socket to
`websockify --inetd` as its standard input.  websockify's own messages go to vncterm's stderr
with `--verbose`, nowhere otherwise.  A thread waits on the child, and if websockify dies it
starts a new one on the same socket a second later.  On stop the child's process group gets
SIGTERM (websockify forks one process per connection), then SIGKILL if it lingers.

Trade-offs.

* A child process, not websockify's Python API.  Both of the API's servers `chdir` the whole
  process into noVNC's folder, the default one installs SIGINT, SIGTERM and SIGCHLD handlers
  (main thread only, and they would replace vncterm's) and forks per connection.  And the API
  is hard to import: Debian's python3-websockify is only on /usr/bin/python3's path, and PyPI's
  websockify pulls in numpy, requests, jwcrypto and redis.  The child costs a fork and about
  35 MB, and keeps its signals and working directory to itself.
* We own the listening socket.  So `--web 0` can pick a free port, a port in use is our error to
  report, the printed URL works before websockify has even started (connections wait in the
  backlog), and a restarted websockify takes over the same port.
* A loopback relay, not a WebSocket endpoint inside vncterm.  It costs one local hop, and every
  browser viewer shows up as 127.0.0.1 in vncterm's log.  In exchange nothing browser-specific
  reaches the RFB code.  VNC authentication passes through untouched: websockify relays bytes,
  and noVNC asks for the password in its own dialog.
* TLS is websockify's (`--cert`, `--key`, `--ssl-only`).  The page and the WebSocket share one
  port, so one certificate covers both.  We load the pair once at start, so that a wrong file
  is an error now rather than a failed handshake in some browser later.

With `--domain all`, `start_host` serves the host's page instead (webhost.py): there the
relay is websockify's request handler inside vncterm, because the page draws thumbnails of
consoles that live here.  The options and checks are the same.

noVNC's files come from `--novnc-dir` or the distribution's package (Debian's `novnc`).  npm's
`@novnc/novnc` is not enough: it is the library (core/, vendor/) without vnc.html and app/.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import options
import webhost

log = logging.getLogger("vncterm.web")

NOVNC_DIRS = (Path("/usr/share/novnc"), Path("/usr/share/webapps/novnc"))
PAGE = "vnc.html"
RESTART_DELAY = 1.0
STOP_TIMEOUT = 5.0
WILDCARDS = {"", "0.0.0.0", "::"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("browser console (noVNC through websockify)")
    group.add_argument("--web", type=options.port_number, metavar="PORT",
                       help="serve noVNC on PORT for browsers (0 picks a free one)")
    group.add_argument("--web-listen", default="127.0.0.1", metavar="ADDR",
                       help="address for browsers (127.0.0.1)")
    group.add_argument("--novnc-dir", metavar="DIR",
                       help=f"noVNC's files (default: the first of "
                            f"{', '.join(map(str, NOVNC_DIRS))} that has {PAGE})")
    group.add_argument("--web-cert", metavar="FILE",
                       help="TLS certificate (PEM; may hold the key too): https and wss only")
    group.add_argument("--web-key", metavar="FILE", help="TLS private key, if not in --web-cert")


def start(args, target: tuple[str, int]) -> Websockify | None:
    """Relay browsers to the viewer port `target` if --web asks for it; print the URL to open."""
    if args.web is None:
        for option in ("novnc_dir", "web_cert", "web_key"):
            if getattr(args, option):
                raise ValueError(f"--{option.replace('_', '-')} needs --web PORT")
        return None
    if args.web_key and not args.web_cert:
        raise ValueError("--web-key needs --web-cert")
    novnc = find_novnc(args.novnc_dir)
    if args.web_cert:
        check_certificate(args.web_cert, args.web_key)
    listener = listen(args.web_listen, args.web)
    argv = websockify_command(novnc, target, args.web_cert, args.web_key)
    try:
        relay = Websockify(argv, listener)
    except OSError:
        listener.close()
        raise
    print(f"vncterm: browser console at {page_url(listener, bool(args.web_cert))}", flush=True)
    return relay


def start_host(args, domains) -> webhost.HostPage | None:
    """--domain all: the host's page (webhost.py) if --web asks for it; print its URL."""
    if args.web is None:
        return start(args, None)
    if args.web_key and not args.web_cert:
        raise ValueError("--web-key needs --web-cert")
    novnc = find_novnc(args.novnc_dir)
    tls = None
    if args.web_cert:
        check_certificate(args.web_cert, args.web_key)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.web_cert, args.web_key)
    if importlib.util.find_spec("websockify") is None:
        raise OSError("--web with --domain all needs websockify's Python package on vncterm's "
                      "Python: Debian's python3-websockify (for /usr/bin/python3)")
    listener = listen(args.web_listen, args.web)
    try:
        page = webhost.HostPage(listener, domains, novnc, tls)
    except BaseException:
        listener.close()
        raise
    print(f"vncterm: browser page for every domain at {page_url(listener, bool(tls), '')}",
          flush=True)
    return page


# --- What to run -------------------------------------------------------------------------------


def find_novnc(chosen: str | None) -> Path:
    """The folder with noVNC's vnc.html: --novnc-dir, or the first distribution path that has it."""
    candidates = [Path(chosen)] if chosen else NOVNC_DIRS
    for folder in candidates:
        if (folder / PAGE).is_file():
            return folder.resolve()
    where = " or ".join(map(str, candidates))
    raise OSError(f"no noVNC in {where} (no {PAGE}): install the Debian package novnc, or give "
                  f"--novnc-dir a noVNC release or checkout (npm's @novnc/novnc lacks {PAGE})")


def check_certificate(cert: str, key: str | None) -> None:
    """Load the TLS pair as websockify will, so a wrong file fails at start."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except OSError as error:  # ssl.SSLError is one too
        pair = f"{cert} and {key}" if key else cert
        raise OSError(f"cannot use {pair} for TLS: {error}") from None


def websockify_command(novnc: Path, target, cert: str | None, key: str | None) -> list[str]:
    """websockify's command line: inetd mode (the socket is stdin), noVNC's files, TLS."""
    program = shutil.which("websockify")
    if program is None:
        raise OSError("--web needs websockify: install the Debian package websockify "
                      "(or pip install websockify)")
    argv = [program, "--inetd", "--web", str(novnc)]
    if cert:
        argv += ["--ssl-only", "--cert", os.path.abspath(cert)]
    if key:
        argv += ["--key", os.path.abspath(key)]
    host, port = target[:2]
    if host in WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    return [*argv, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]


def listen(host: str, port: int) -> socket.socket:
    """The web port, bound and listening; websockify only accepts on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise OSError(f"cannot listen for browsers on {host}:{port}: {error.strerror} "
                      "(see --web, --web-listen)") from None


def page_url(listener: socket.socket, tls: bool, path: str = f"{PAGE}?autoconnect=1") -> str:
    """The address to open in a browser: noVNC's page, connecting at once (or `path`)."""
    host, port = listener.getsockname()[:2]
    if host in WILDCARDS:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/{path}"


# --- The supervised child ----------------------------------------------------------------------


class Websockify:
    """websockify running on our listening socket, restarted if it dies, stopped with us."""

    def __init__(self, argv: list[str], listener: socket.socket) -> None:
        self.argv = argv
        self.listener = listener
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.process = self.spawn()
        self.thread = threading.Thread(target=self.supervise, name="websockify", daemon=True)
        self.thread.start()

    def spawn(self) -> subprocess.Popen:
        # Its own process group, so that stop() reaches the per-connection children too and a
        # Ctrl-C at the terminal reaches only vncterm, which then stops it.
        output = None if log.isEnabledFor(logging.INFO) else subprocess.DEVNULL
        return subprocess.Popen(self.argv, stdin=self.listener, stdout=output, stderr=output,
                                start_new_session=True)

    def supervise(self) -> None:
        """Wait for websockify; when it dies unasked, start another after a pause."""
        process = self.process
        while True:
            status = process.wait()
            if self.stopping.is_set():
                return
            log.warning("websockify exited with status %s; starting it again (--verbose shows "
                        "its output)", status)
            if self.stopping.wait(RESTART_DELAY):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                process = self.process = self.spawn()

    def stop(self) -> None:
        """Stop websockify and every connection it relays; close the web port."""
        with self.lock:
            self.stopping.set()
            process = self.process
        signal_group(process, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("websockify ignored SIGTERM for %.0f s: killing it", STOP_TIMEOUT)
            signal_group(process, signal.SIGKILL)
            process.wait()
        self.thread.join(STOP_TIMEOUT)
        self.listener.close()


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send signum to the process group that process leads, if any of it is left."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
