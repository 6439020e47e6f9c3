"""vncterm as a dom0 service: its options, its log, its pid file, and dropping root.

A toolstack runs one vncterm per domain and manages it like any daemon, so vncterm needs the
usual plumbing: a pid file (`--pidfile`), a clean exit on SIGTERM (vncterm.py), its log in
syslog or a file with one line per viewer connect, disconnect and VT switch (`--syslog`,
`--log-file`), and a way to give up root (`--user`).  `Service` does these in the one order
that works:

1. at start, before any thread: write the pid file and, with --user, fork the root helper
   (xen.Helper) that keeps the steps needing root, xenstore and opening the guest's pty;
2. once the ports are open: make the Xen source (`source`) with where vncterm listens, so it
   can publish the ports in xenstore, and with what to do when the domain is gone; let the
   guest's own addresses reach the reverse port (`reverse_allow`); dial the device model's
   VNC display, an HVM guest's VGA screen, where xenstore says it is (`desktop_address`);
3. once everything has started (`drop_root`): with --user, become that user;
4. at exit (`close`): the helper (or we) remove the published keys and the pid file.

The options also decide the default ports: 5900+N and 5500+N with --domain N.

With `--domain all` the same steps serve the whole host: the pid file and the helper are the
host's (the helper answers for every domain, see xen.py), and `for_domain(N)` gives each domain
a `DomainService`, the source and reverse-port rule that `--domain N` would have. `--port`
and `--reverse-port` are then bases: domain N gets base+N.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401  (see drop_privileges)
import errno
import logging
import logging.handlers
import os
import pwd
import threading
from collections.abc import Callable

import vncproxy
import xen
from xen import DEFAULT_PREFIX, PREFIX_VARIABLE, DomainSource, Helper, Pidfile, Xenstore

log = logging.getLogger("vncterm.service")

GONE_GRACE = 5.0
SYSLOG_ADDRESS = "/dev/log"


def drop_privileges(user: str) -> None:
    """Become user for good: its uid, its gid and its groups, with no way back to root.

    Python imports some modules on first use; after this, the interpreter's own files may be
    unreadable (an interpreter installed under /root). So what is needed later is imported
    first: the idna codec, which socket.getaddrinfo uses for every host it is given, such as
    the desktop dialler's.
    """
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no user {user!r}") from None
    os.initgroups(account.pw_name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    if account.pw_uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise RuntimeError(f"still able to become root after switching to {user}")


def setup_logging(verbose: bool = False, syslog: bool = False, path: str | None = None,
                  syslog_address: str = SYSLOG_ADDRESS) -> None:
    """Send vncterm's log to syslog (facility daemon), to a file, or to stderr.

    To syslog or a file, viewer connects and disconnects (INFO) are logged; to stderr, only
    with verbose. OSError if syslog is asked for and nothing listens on syslog_address.
    """
    if syslog:
        if not os.path.exists(syslog_address):
            raise OSError(errno.ENOENT, f"no syslog socket at {syslog_address}")
        handler = logging.handlers.SysLogHandler(
            syslog_address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("vncterm[%(process)d]: %(name)s: %(message)s"))
    else:
        handler = logging.FileHandler(path) if path else logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose or syslog or path else logging.WARNING)


def domain_option(text: str) -> int | str:
    """--domain's value: a domain id, or "all" for every domain of the host."""
    if text == xen.ALL:
        return xen.ALL
    try:
        return xen.check_domain(int(text))
    except ValueError as error:
        reason = str(error) if text.isdigit() else "not a number"
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: {reason} (or {xen.ALL!r})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Xen (with --domain) and running as a dom0 service")
    group.add_argument("--xenstore-prefix", metavar="PREFIX",
                       help=f"run xenstore tools as PREFIX + read/write/rm/watch "
                            f"(${PREFIX_VARIABLE}, else {DEFAULT_PREFIX})")
    group.add_argument("--stay", action="store_true",
                       help="keep running when the domain is destroyed, for its return")
    group.add_argument("--pidfile", metavar="FILE", help="write vncterm's process id to FILE")
    group.add_argument("--user", metavar="USER",
                       help="run as USER once the ports are open; a root helper keeps "
                            "xenstore and the console pty")
    group.add_argument("--syslog", action="store_true", help="log to syslog (facility daemon)")
    group.add_argument("--log-file", metavar="FILE",
                       help="vncterm's own log, with viewer connects (--log is the console's)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the options above, and default the ports (None) to 5900+N and 5500+N."""
    if args.domain is not None:
        missing = Xenstore(args.xenstore_prefix).missing_tools()
        if missing:
            parser.error(f"xenstore tools not found: {' '.join(missing)} (--xenstore-prefix)")
    elif args.stay:
        parser.error("--stay goes with --domain")
    if args.domain == xen.ALL and (args.port == 0 or args.reverse_port == 0):
        parser.error("with --domain all, --port and --reverse-port are bases (N is added): not 0")
    if args.domain == xen.ALL and args.log:
        parser.error("--log takes one console's stream: not with --domain all")
    if args.domain == xen.ALL and args.desktop_connect:
        parser.error("--desktop-connect names one desktop: not with --domain all")
    viewer_port, reverse_port = xen.default_ports(args.domain if type(args.domain) is int else 0)
    args.port = viewer_port if args.port is None else args.port
    args.reverse_port = reverse_port if args.reverse_port is None else args.reverse_port
    if args.syslog and args.log_file:
        parser.error("--syslog or --log-file, not both")
    if args.user is not None:
        if os.geteuid() != 0:
            parser.error("--user needs vncterm to start as root")
        try:
            pwd.getpwnam(args.user)
        except KeyError:
            parser.error(f"--user {args.user}: no such user")


class DomainService:
    """What serving one domain takes from the service: its console source, its reverse rule."""

    def __init__(self, args: argparse.Namespace, domain) -> None:
        self.args = args
        self.domain = domain

    def source(self, adverts: dict[str, str], leave) -> DomainSource:
        """The domain's console, publishing `adverts`; `leave()` when the domain is gone."""
        return DomainSource(self.domain, None if self.args.stay else leave, adverts)

    def reverse_allow(self, source) -> Callable[[str], bool]:
        """Who may connect to the reverse port: --reverse-allow, else loopback and the guest."""
        allow = vncproxy.allow_only(self.args.reverse_allow or vncproxy.LOOPBACK)
        if isinstance(source, DomainSource) and self.args.reverse_allow is None:
            return guest_or(allow, source)
        return allow

    def desktop_address(self, source):
        """With --domain, where the domain's device model serves its display (for the dialler)."""
        return source.desktop_address if isinstance(source, DomainSource) else None


class Service(DomainService):
    """vncterm's life as a dom0 service: pid file, root helper, published ports, dropping root."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Write the pid file and, with --user, fork the helper: call before any thread starts."""
        self.pidfile = Pidfile(args.pidfile) if args.pidfile else None
        domain = None
        if args.domain == xen.ALL:
            domain = xen.Host(Xenstore(args.xenstore_prefix))
        elif args.domain is not None:
            domain = xen.Domain(args.domain, Xenstore(args.xenstore_prefix))
        self.helper = Helper.start(domain, self.pidfile) if args.user else None
        # With --user the domain's (or host's) privileged steps are requests to the root helper.
        super().__init__(args, self.helper if self.helper is not None and domain else domain)

    def for_domain(self, number: int, events: xen.Events) -> DomainService:
        """With --domain all: what `--domain number` would have, through the host's events."""
        return DomainService(self.args, xen.HostDomain(number, self.domain, events))

    def drop_root(self) -> None:
        """The ports are open and everything started: drop root if asked."""
        if self.args.user:
            drop_privileges(self.args.user)

    def close(self) -> None:
        """After the console stopped: the helper (or we) clean up the keys and the pid file."""
        if self.helper is not None:
            self.helper.close()
            return
        if isinstance(self.domain, xen.Host):
            self.domain.retract()
        if self.pidfile is not None:
            self.pidfile.remove()


def leave(server) -> None:
    """The domain is gone: viewers read it on the status line; exit when they go, or soon."""
    server.console_closed()
    timer = threading.Timer(GONE_GRACE, server.stop_soon)
    timer.daemon = True
    timer.start()


def guest_or(allow, source: DomainSource):
    """Also let in the addresses the toolstack gave the guest, looked up when it connects."""
    def allowed(host: str) -> bool:
        return allow(host) or host in guest_addresses(source)
    return allowed


def guest_addresses(source: DomainSource) -> list[str]:
    try:
        return source.domain.guest_addresses()
    except OSError as error:
        log.warning("cannot read the guest's addresses: %s", error)
        return []
