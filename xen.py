"""Xen glue: domain N's console found through xenstore, and where vncterm listens published back.

What.  In a Xen dom0, `vncterm.py --domain N` serves domain N's text console. xenconsoled gives
a PV guest's console (hvc0 inside the guest) a pty and writes the pty's path to
`/local/domain/N/console/tty`. An HVM guest has no such key: its console is the first serial
port its device model (QEMU) emulates, a pty that QEMU names at `serial/0/tty`, which is what
`xl console` opens for an HVM guest too. `DomainSource` is a console source that speaks
sources.py's protocol (`open`, `fileno`, `read`, `write`, `close`). It finds the pty under the
first of those keys present, opens it the way `sources.PtySource` does, and follows the keys
while the guest starts, reboots and dies. Each time it attaches, it publishes where vncterm
listens: `console/vnc-reverse`, ADDR:PORT for the guest's own VNC server to connect back to,
and the viewer port as `console/vnc-port`, the key qemu-dm and XenServer's vncterm write for
toolstacks. That key is also where a device model publishes its own VNC server (the VGA screen
of an HVM guest, a PV guest's vfb), and `xl vncviewer` reads it. So we never overwrite it: for
an HVM guest, or where the key already holds a port that is not ours, ours goes to
`console/vncterm-port`. We remove our keys when we let go, but only those still holding what
we wrote: a device model that wrote after us keeps its key.

The device model's VNC server is the domain's desktop. `desktop_address()` is where it listens
(`console/vnc-port`, and `console/vnc-listen`, read as `xl vncviewer` reads them), which
vncproxy's dialler asks before each attempt. It follows the device model across reboots and
restarts, because every change of those keys fires our watch and we read them again.

How.  We reach xenstore through its command-line tools (`xenstore-read`, `-write`, `-rm`,
`-watch`; see `Xenstore`), not through libxenstore. They are installed wherever Xen is, they need
no binding, and tests can put fakes of them on PATH (tests/fakexenstore.py). Each question costs
a process, a few milliseconds, so we ask only when something has changed. One
`xenstore-watch console serial/0/tty` (the tool takes several paths) runs for as long as we
wait. It prints a line per path straight away, then one line per write at or under them, and
one when they go with the domain's directory (a removal fires the watches on every key under
it). We never parse those lines: any line means "look again". We watch these two and not the
domain directory, because the guest may write under its own directory as fast as it likes,
and each event costs us a process. `console/` holds our own keys too, so each publish costs
one more look, and nothing more: looking never writes.

The source moves between three states, driven by the Console's reader thread:
- Waiting: there is no domain yet, or no key, or a refused key, or a pty that will not open.
  `open()` raises an OSError whose text the Console puts on the status line. The next `open()`
  asks xenstore again only if the watch has fired since the last look. So a domain that takes
  an hour to start costs one sleeping `xenstore-watch` process, and nothing else.
- Attached: the pty is the source's fd. When the watch fires, `read()` checks the key again.
  If the key now names another pty (xenconsoled restarted, or a soft reset) or has gone (the
  domain was destroyed), `read()` drains what the old pty still holds and then reports end of
  file. The Console then closes the source, shows "console closed", and opens it again. A
  hangup (EIO) from the pty has the same effect, and that is how most ends show up first.
- Gone: the domain's directory disappeared after we had seen it. `on_gone` is called once; the
  command line makes vncterm leave then (unless --stay), and the source waits for the number to
  come back.
A Console can only wait on the watch if it knows the watch's fd (`watch_fileno`). Without that,
the watch still decides when xenstore is asked, and only reaction time is lost.

We publish on attach, not at startup. libxl rebuilds /local/domain/N from scratch when it
creates a domain, so earlier keys would be wiped. Worse, a write under a missing directory
creates it, which would fake a domain that does not exist. For the same reason, a domain that
vanishes while we write gets a tidy removal (`xenstore-rm -t`), which takes away any directory
our writes re-created.

Trust.  Treat the guest as hostile. In stock toolstacks a guest can only read `console/`, but a
guest's xenstore keys in general are its own to write. `console/tty` names a file that root opens
read-write, puts in raw mode and types keystrokes into. If the key named /dev/sda, /etc/shadow or
a FIFO, vncterm would become a confused deputy: it would show a disk on screen, type into a file,
or hang on the FIFO. So we accept only `/dev/pts/<number>`, and the file we open must be a tty.
Anything else is refused, the refusal goes on the status line, and the file is not opened. The
values we write are port numbers and addresses, checked against a strict pattern, because
xenstore-write reads backslash escapes in them. The device model's address is dialled from dom0
with --desktop-password-file's password, so it must be a port number and an IP address (a
wildcard or a missing vnc-listen means loopback, as for `xl vncviewer`); a name is refused
rather than resolved, and our own viewer port is never dialled. Stock toolstacks let the guest
only read `console/`; where a guest could write it, it could point us at another address, and
every limit on a hostile guest server still holds there (vncproxy.py).

Privileges (--user).  Two things need root: reading and writing xenstore (xenstored's socket and
/dev/xen/xenbus belong to root alone), and opening the pty. xenconsoled creates each pty owned by
root with mode 0620, so group tty may write to it but not read it. Both are needed again at every
reboot. Dropping root for good would lose the console at the first reboot. Keeping root as the
saved uid would make dropping pointless, because any code that runs could take root back. So with
--user, vncterm splits in two, as OpenSSH's privilege separation does. Before any thread starts,
it forks a `Helper` that stays root and serves nine requests, all about domain N only: exists,
console_path, open_console, watch, unwatch, publish (keys and values checked against a fixed
list), retract, guest_addresses and desktop_address. No request takes a path, so the
unprivileged half, which parses everything viewers and the guest send, cannot ask for any
other file or key. The opened pty and the watch's pipe come back as file descriptors over the
socket (SCM_RIGHTS). However vncterm ends, even by SIGKILL, the helper sees its socket close.
It then removes the published keys and the pid file, and exits.

Every domain (--domain all). `Host` is xenstore for the whole host, and `Events` turns three
watches into everything the host's domains need to know. `xenstore-watch @introduceDomain` and
`@releaseDomain` are xenstored's special events, the ones Xen's own tools follow: each line
means "list /local/domain again" (`xenstore-list`). `xenstore-watch /local/domain` prints the
path of every write under any domain; `Events` hands each domain's changes to its watched keys
(WATCHED_KEYS, and the removal of its directory) to that domain's `DomainSource` through a pipe
of its own, in place of the per-domain watch process. So a host runs three watch processes
however many domains it has. The price is that every write any guest makes under its own
directory is one line for us to read and drop: a line costs a read and a prefix test, never a
process. The domain ids come from directory names, which we check: a name that is not a number,
dom0, or an id past MAX_DOMAIN is logged once and ignored. A domain's `name` key is shown to
browsers, so a name with control characters is logged and not shown. With --user the helper
serves the whole host: the same requests, each with a domain id, plus `list_domains` and
`watch_events`.

The dom0 service's plumbing (options, logging, dropping root, the order of it all) is in
service.py.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import logging.handlers
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import threading

import sources

log = logging.getLogger("vncterm.xen")

PREFIX_VARIABLE = "VNCTERM_XENSTORE_PREFIX"
DEFAULT_PREFIX = "xenstore-"
VERBS = ("read", "write", "rm", "watch", "list")
TOOL_TIMEOUT = 10.0
MAX_DOMAIN = 0x7FEF  # DOMID_FIRST_RESERVED - 1: the ids above it are Xen's own
VIEWER_PORT_BASE, REVERSE_PORT_BASE = 5900, 5500
PTY_PATH = re.compile(r"/dev/pts/[0-9]{1,7}")
VNC_PORT_KEY, VNC_REVERSE_KEY = "console/vnc-port", "console/vnc-reverse"
VNCTERM_PORT_KEY, VNC_LISTEN_KEY = "console/vncterm-port", "console/vnc-listen"
CONSOLE_KEYS = ("console/tty", "serial/0/tty")  # a PV console first, else an HVM serial port
WATCHED_KEYS = ("console", "serial/0/tty")
ADVERT_VALUES = {
    VNC_PORT_KEY: re.compile(r"[0-9]{1,5}"),
    VNCTERM_PORT_KEY: re.compile(r"[0-9]{1,5}"),
    VNC_REVERSE_KEY: re.compile(r"[0-9A-Za-z.:%\[\]-]{1,80}:[0-9]{1,5}"),
}
# Errors that persist until xenstore changes; any other failure is retried on the Console's timer.
UNTIL_CHANGED = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO, errno.ENOTTY}
HELPER_REQUESTS = ("exists", "console_path", "open_console", "watch", "unwatch", "publish",
                   "retract", "guest_addresses", "desktop_address")
DOMAIN_REQUESTS = ("exists", "name", "console_path", "open_console", "publish", "retract",
                   "guest_addresses", "desktop_address")
HOST_REQUESTS = ("list_domains", "watch_events")
DOMAINS = "/local/domain"
EVENT_WATCHES = ("@introduceDomain", "@releaseDomain", DOMAINS)
# The domain itself, or WATCHED_KEYS under it: what each domain's own watch would report.
DOMAIN_LINE = re.compile(r"/local/domain/([0-9]{1,5})(/console(/.*)?|/serial/0/tty(/.*)?)?")
NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,64}")
ALL = "all"
MAX_VIFS = 4
WILDCARDS = ("", "0.0.0.0", "::")
LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}


def default_ports(number: int) -> tuple[int, int]:
    """The viewer and reverse-connection ports for domain N: 5900+N and 5500+N."""
    return VIEWER_PORT_BASE + number, REVERSE_PORT_BASE + number


def check_domain(number: int) -> int:
    if not 0 <= number <= MAX_DOMAIN:
        raise ValueError(f"domain {number} is not a domain id (0 to {MAX_DOMAIN})")
    return number


def domain_ids(names: list[str], warned: set[str]) -> set[int]:
    """The guest domain ids among /local/domain's children; each bad name logged once."""
    found = set()
    for name in names:
        number = int(name) if name.isascii() and name.isdigit() else None
        if number is not None and 0 < number <= MAX_DOMAIN:
            found.add(number)
        elif number != 0 and name not in warned:
            warned.add(name)
            log.warning("ignoring %s/%s: not a domain id", DOMAINS, repr(name)[:40])
    return found


def check_pty_path(value: str) -> str:
    """The pty path from console/tty, or OSError: we open nothing but /dev/pts/N."""
    if not PTY_PATH.fullmatch(value):
        raise OSError(errno.EPERM, f"refused tty {value[:24]!r}: not /dev/pts/N")
    return value


def vnc_address(listen: str | None, port: str | None) -> tuple[str, int] | None:
    """Where a device model's VNC server listens, from console/vnc-listen and -port, or None.

    Like `xl vncviewer`, a missing vnc-listen means this host, and so does a wildcard. Only an
    IP address is accepted: the address is dialled from dom0, with --desktop-password-file.
    """
    if port is None or not ADVERT_VALUES[VNC_PORT_KEY].fullmatch(port) \
            or not 0 < int(port) < 65536:
        return None
    host = LOOPBACK_FOR.get(listen or "", listen)
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        log.warning("refused console/vnc-listen %r: not an IP address", host[:40])
        return None


def host_port(host: str, port: int) -> str:
    """ADDR:PORT, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def adverts(viewer_port: int, reverse: tuple[str, int] | None = None) -> dict[str, str]:
    """The keys to publish under the domain: the viewer port, and where guests connect back.

    A wildcard listening address (0.0.0.0, ::) names no host a guest could dial, so it is not
    published; the guest then needs the address from elsewhere (its kernel command line).
    """
    keys = {VNC_PORT_KEY: str(viewer_port)}
    if reverse is not None and reverse[0] not in WILDCARDS:
        keys[VNC_REVERSE_KEY] = host_port(*reverse)
    return keys


# --- xenstore through its command-line tools ---------------------------------------------------


class XenstoreError(OSError):
    """A xenstore tool failed for a reason other than a missing key; worth retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EAGAIN, message)


class Xenstore:
    """xenstore's command-line tools, named `prefix + verb`: xenstore-read, xenstore-watch...

    The prefix may hold words, so "xenstore " runs `xenstore read` (the multi-call form) and
    "/opt/xen/bin/xenstore-" runs tools from a non-standard place.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or os.environ.get(PREFIX_VARIABLE) or DEFAULT_PREFIX

    def command(self, verb: str) -> list[str]:
        return shlex.split(self.prefix + verb)

    def missing_tools(self) -> list[str]:
        """The tools that are not installed, for a clear error at startup."""
        programs = [self.command(verb)[0] for verb in VERBS]
        return [program for program in programs if not shutil.which(program)]

    def read(self, path: str) -> str | None:
        """The key's value, or None if there is no such key (or we may not read it)."""
        result = self._run("read", path)
        if result.returncode == 0:
            return result.stdout.removesuffix("\n")
        if "couldn't read path" in result.stderr:
            return None
        raise self._failure("read", path, result)

    def list(self, path: str) -> list[str]:
        """The names of the key's children; an empty list if there is no such key."""
        result = self._run("list", path)
        if result.returncode == 0:
            return result.stdout.splitlines()
        if "could not list path" in result.stderr or "couldn't list path" in result.stderr:
            return []
        raise self._failure("list", path, result)

    def write(self, path: str, value: str) -> None:
        result = self._run("write", path, value)
        if result.returncode != 0:
            raise self._failure("write", path, result)

    def rm(self, path: str, tidy: bool = False) -> None:
        """Remove the key and its subtree; tidy: and then each parent left empty and valueless."""
        result = self._run("rm", *(["-t"] if tidy else []), path)
        if result.returncode != 0:
            raise self._failure("rm", path, result)

    def watch(self, *paths: str) -> subprocess.Popen:
        """Start `xenstore-watch PATH...`; its stdout has a line per event on any of them."""
        return subprocess.Popen([*self.command("watch"), *paths], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE)

    def _run(self, verb: str, *arguments: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([*self.command(verb), *arguments], stdin=subprocess.DEVNULL,
                                  capture_output=True, encoding="utf-8", errors="replace",
                                  timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise XenstoreError(f"xenstore-{verb} {arguments[-1]}: no answer") from None

    def _failure(self, verb: str, path: str, result) -> XenstoreError:
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        return XenstoreError(f"xenstore-{verb} {path}: {reason[0][:80]}")


# --- One domain: the requests that need root ---------------------------------------------------


class Domain:
    """Domain N in xenstore: is it there, which pty is its console, and the keys we publish."""

    def __init__(self, number: int, xenstore: Xenstore) -> None:
        self.number = check_domain(number)
        self.xenstore = xenstore
        self.path = f"/local/domain/{number}"
        self.console_key: str | None = None
        self.published: dict[str, str] = {}
        self.watcher: subprocess.Popen | None = None

    def exists(self) -> bool:
        return self.xenstore.read(self.path) is not None

    def console_path(self) -> str | None:
        """The pty console/tty names, else serial/0/tty (an HVM guest's first serial port).

        None if neither is there; OSError if the key names anything but a pty.
        """
        for key in CONSOLE_KEYS:
            value = self.xenstore.read(f"{self.path}/{key}")
            if value:
                self.console_key = key
                return check_pty_path(value)
        self.console_key = None
        return None

    def desktop_address(self) -> tuple[str, int] | None:
        """The device model's VNC server (console/vnc-port and -listen), unless that key is ours."""
        port = self.xenstore.read(f"{self.path}/{VNC_PORT_KEY}")
        if port is None or self.published.get(VNC_PORT_KEY) == port:
            return None
        return vnc_address(self.xenstore.read(f"{self.path}/{VNC_LISTEN_KEY}"), port)

    def name(self) -> str | None:
        """The domain's name key, or None if there is none or it holds control characters."""
        value = self.xenstore.read(f"{self.path}/name")
        if value and not NAME.fullmatch(value):
            log.warning("domain %d: ignoring its name %s", self.number, repr(value)[:40])
            return None
        return value

    def guest_addresses(self) -> list[str]:
        """The addresses the toolstack gave the domain's network interfaces (xl's vif `ip=`).

        They are read from dom0's own backend directory, which the guest cannot write; the
        guest's own keys (a guest agent's `attr/vif`) would let it vouch for anyone.
        """
        found = []
        for vif in range(MAX_VIFS):
            value = self.xenstore.read(f"/local/domain/0/backend/vif/{self.number}/{vif}/ip")
            for word in (value or "").split():
                try:
                    found.append(str(ipaddress.ip_address(word)))
                except ValueError:
                    log.warning("domain %d: vif %d has a bad ip %r", self.number, vif, word)
        return found

    def open_console(self) -> tuple[str, int]:
        """Open the console's pty (console_path): its path, and a raw non-blocking fd, ours."""
        path = self.console_path()
        if path is None:
            raise OSError(errno.ENOENT, "no console/tty or serial/0/tty in xenstore yet")
        pty = sources.PtySource(path)
        pty.open()
        fd, pty.fd = pty.fd, None
        if not os.isatty(fd):
            os.close(fd)
            raise OSError(errno.ENOTTY, f"refused {path}: not a tty")
        return path, fd

    def watch(self) -> int:
        """Start watching the console keys (and so the domain); an fd of its lines, ours."""
        self.unwatch()
        self.watcher = self.xenstore.watch(*(f"{self.path}/{key}" for key in WATCHED_KEYS))
        return os.dup(self.watcher.stdout.fileno())

    def unwatch(self) -> None:
        if self.watcher is not None:
            self.watcher.kill()
            self.watcher.wait()
            self.watcher.stdout.close()
            self.watcher = None

    def publish(self, keys: dict[str, str]) -> None:
        """Write our keys under the domain (only the known keys, with checked values).

        console/vnc-port may belong to a device model (QEMU writes it for an HVM guest's VGA
        display): we never overwrite it, and publish our port as console/vncterm-port instead.
        """
        for key, value in keys.items():
            pattern = ADVERT_VALUES.get(key)
            if pattern is None or not pattern.fullmatch(value):
                raise OSError(errno.EPERM, f"refused to publish {key}={value[:40]!r}")
        if VNC_PORT_KEY in keys and not self._vnc_port_is_ours():
            keys = {VNCTERM_PORT_KEY if key == VNC_PORT_KEY else key: value
                    for key, value in keys.items()}
        for key, value in keys.items():
            self.published[key] = value
            self.xenstore.write(f"{self.path}/{key}", value)
        if self.console_path() is None:
            self.retract()

    def _vnc_port_is_ours(self) -> bool:
        """True if console/vnc-port is ours to write: a PV console, and the key absent or ours."""
        if self.console_key != CONSOLE_KEYS[0]:
            return False
        value = self.xenstore.read(f"{self.path}/{VNC_PORT_KEY}")
        return value is None or value == self.published.get(VNC_PORT_KEY)

    def retract(self) -> None:
        """Remove the keys we published, and any directory our writes re-created.

        A key that holds another value now is someone else's (a device model that started
        after us) and stays. A write under a directory that was just removed creates it
        again. If the domain was destroyed while we published, the tidy removal takes those
        ghost directories away.
        """
        for key, value in sorted(self.published.items()):
            path = f"{self.path}/{key}"
            try:
                if self.xenstore.read(path) in (value, None):
                    self.xenstore.rm(path, tidy=True)
            except OSError as error:
                log.debug("domain %d: %s", self.number, error)
        self.published = {}


# --- The console source --------------------------------------------------------------------------


class DomainSource:
    """Domain N's console: the pty xenstore names, followed across reboots."""

    restarts = True

    def __init__(self, domain: Domain | Helper, on_gone=None,
                 adverts: dict[str, str] | None = None) -> None:
        """`adverts` are the keys to publish on each attach (see `adverts`)."""
        self.domain = domain
        self.name = f"domain {domain.number}"
        self.on_gone = on_gone
        self.adverts = adverts or {}
        self.pty = sources.FdSource()
        self.path: str | None = None
        self.desktop: tuple[str, int] | None = None
        self.watch_fd: int | None = None
        self.waiting: OSError | None = None
        self.seen = False
        self.gone = False
        self.moved = False

    def fileno(self) -> int | None:
        return self.pty.fd

    def watch_fileno(self) -> int | None:
        """An fd that becomes readable when xenstore changed: worth waiting on, then look again."""
        return self.watch_fd

    def open(self) -> None:
        if self.watch_fd is None:
            self.watch_fd = self.domain.watch()
            os.set_blocking(self.watch_fd, False)
        changed = self._watch_fired()
        if changed:
            self._look_for_desktop()
        if self.waiting is not None and not changed:
            raise OSError(self.waiting.errno, self.waiting.strerror)
        try:
            self._attach()
        except OSError as error:
            self.waiting = error if error.errno in UNTIL_CHANGED else None
            raise
        self.waiting = None

    def _attach(self) -> None:
        if not self.domain.exists():
            if self.seen and not self.gone:
                self.gone = True
                log.warning("domain %d is gone", self.domain.number)
                if self.on_gone is not None:
                    self.on_gone()
            raise OSError(errno.ENOENT, "the domain is gone" if self.gone else "no such domain yet")
        self.seen, self.gone = True, False
        self.path, self.pty.fd = self.domain.open_console()
        self.moved = False
        if self.adverts:
            try:
                self.domain.publish(self.adverts)
            except OSError as error:
                log.warning("domain %d: cannot publish the ports: %s", self.domain.number, error)
        self._look_for_desktop()

    def desktop_address(self) -> tuple[str, int] | None:
        """Where the domain's device model serves its VNC display, as last seen; None if nowhere.

        Called from the desktop dialler's thread; the Console's reader thread keeps it current.
        """
        return self.desktop

    def _look_for_desktop(self) -> None:
        try:
            address = self.domain.desktop_address()
        except OSError as error:
            log.debug("domain %d: %s", self.domain.number, error)
            address = None
        if address is not None and str(address[1]) == self.adverts.get(VNC_PORT_KEY):
            address = None  # our own port, left behind by an earlier vncterm: never dial it
        if address != self.desktop:
            log.info("domain %d: device model display %s", self.domain.number,
                     "gone" if address is None else host_port(*address))
        self.desktop = address

    def read(self) -> bytes | None:
        """Bytes from the guest; b"" once the pty hung up or xenstore moved the console away."""
        if self.watch_fd is not None and self._watch_fired():
            self._look_for_desktop()
            self.moved = self.moved or self.watch_fd is None or not self._still_current()
        data = self.pty.read()
        if data is None and self.moved:
            return b""
        return data

    def _still_current(self) -> bool:
        try:
            return self.domain.console_path() == self.path
        except OSError:
            return False

    def _watch_fired(self) -> bool:
        """Consume the watch's lines; True if there were any, or if the watch ended."""
        try:
            if os.read(self.watch_fd, 65536):
                return True
        except BlockingIOError:
            return False
        self._stop_watch()
        return True

    def write(self, data: bytes) -> int:
        return self.pty.write(data)

    def close(self) -> None:
        """Let go of the pty, the watch and the published keys; open() takes them up again."""
        self.pty.close()
        self.path = None
        self.waiting = None
        self._stop_watch()
        if self.adverts:
            self.domain.retract()

    def _stop_watch(self) -> None:
        if self.watch_fd is not None:
            os.close(self.watch_fd)
            self.watch_fd = None
            self.domain.unwatch()


# --- Every domain of the host (--domain all) ------------------------------------------------------


class Host:
    """xenstore for every domain: the list, the three event watches, each domain's requests."""

    def __init__(self, xenstore: Xenstore) -> None:
        self.xenstore = xenstore
        self.domains: dict[int, Domain] = {}
        self.watchers: list[subprocess.Popen] = []

    def list_domains(self) -> list[str]:
        return self.xenstore.list(DOMAINS)

    def watch_events(self) -> list[int]:
        """Start the three event watches (EVENT_WATCHES); fds of their lines the caller owns."""
        self.unwatch()
        self.watchers = [self.xenstore.watch(path) for path in EVENT_WATCHES]
        return [os.dup(watcher.stdout.fileno()) for watcher in self.watchers]

    def request(self, name: str, number: int, *arguments):
        """Run one of DOMAIN_REQUESTS for domain `number`."""
        domain = self.domains.get(number)
        if domain is None:
            domain = self.domains[number] = Domain(number, self.xenstore)
        result = getattr(domain, name)(*arguments)
        if name == "retract":
            del self.domains[number]
        return result

    def unwatch(self) -> None:
        for watcher in self.watchers:
            watcher.kill()
            watcher.wait()
            watcher.stdout.close()
        self.watchers = []

    def retract(self) -> None:
        """At exit: stop watching, and remove every key we published."""
        self.unwatch()
        for domain in list(self.domains.values()):
            domain.retract()
        self.domains = {}


class Events:
    """The three watches' lines, read by one thread: rescans for the host, pokes for domains.

    `subscribe(N)` gives domain N's DomainSource an fd that becomes readable when N's
    console/tty or its directory changes, as its own watch process would; `on_domains()` runs
    on every @introduceDomain and @releaseDomain.
    """

    def __init__(self, fds: list[int], on_domains) -> None:
        self.fds = fds
        self.on_domains = on_domains
        self.lock = threading.Lock()
        self.pokes: dict[int, int] = {}
        self.wake_read, self.wake_write = os.pipe()
        self.thread = threading.Thread(target=self.run, name="xenstore events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def subscribe(self, number: int) -> int:
        """An fd for domain N's console changes, readable at once (a new watch fires once)."""
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        os.write(write_end, b"\n")
        with self.lock:
            old = self.pokes.pop(number, None)
            self.pokes[number] = write_end
        if old is not None:
            os.close(old)
        return read_end

    def unsubscribe(self, number: int) -> None:
        with self.lock:
            write_end = self.pokes.pop(number, None)
        if write_end is not None:
            os.close(write_end)

    def run(self) -> None:
        poller = select.poll()
        for fd in [*self.fds, self.wake_read]:
            poller.register(fd, select.POLLIN)
        files = {fd: os.fdopen(fd, "rb", buffering=0) for fd in self.fds}
        while files:
            for fd, _ in poller.poll():
                if fd == self.wake_read:
                    return
                line = files[fd].readline()
                if not line:
                    log.error("xenstore-watch %s ended: its events are no longer followed",
                              EVENT_WATCHES[self.fds.index(fd)])
                    poller.unregister(fd)
                    files.pop(fd).close()
                    continue
                self.dispatch(line.decode("utf-8", "replace").rstrip("\n"))

    def dispatch(self, path: str) -> None:
        if path in EVENT_WATCHES[:2]:
            self.on_domains()
            return
        match = DOMAIN_LINE.fullmatch(path)
        if match is None:
            return
        with self.lock:
            write_end = self.pokes.get(int(match[1]))
            if write_end is not None:
                try:
                    os.write(write_end, b"\n")
                except BlockingIOError:
                    pass  # the pipe is full of pokes: its reader will look again anyway

    def stop(self) -> None:
        os.write(self.wake_write, b"\n")
        if self.thread.is_alive():
            self.thread.join()
        for fd in [self.wake_read, self.wake_write, *self.pokes.values()]:
            os.close(fd)
        self.pokes = {}


class HostDomain:
    """One domain of the host, as a DomainSource sees it: its requests go to the Host (or the
    root helper) with its id, and its watch is a subscription to the shared Events."""

    def __init__(self, number: int, host: Host | Helper, events: Events) -> None:
        self.number = check_domain(number)
        self.host = host
        self.events = events

    def exists(self) -> bool:
        return self.host.request("exists", self.number)

    def console_path(self) -> str | None:
        return self.host.request("console_path", self.number)

    def desktop_address(self) -> tuple[str, int] | None:
        address = self.host.request("desktop_address", self.number)
        return tuple(address) if address else None

    def guest_addresses(self) -> list[str]:
        return self.host.request("guest_addresses", self.number)

    def open_console(self) -> tuple[str, int]:
        return self.host.request("open_console", self.number)

    def publish(self, keys: dict[str, str]) -> None:
        self.host.request("publish", self.number, keys)

    def retract(self) -> None:
        self.host.request("retract", self.number)

    def watch(self) -> int:
        return self.events.subscribe(self.number)

    def unwatch(self) -> None:
        self.events.unsubscribe(self.number)


# --- Privilege separation (--user) ------------------------------------------------------------


class Helper:
    """The half of vncterm that keeps root, seen from the other half: Domain's methods by request.

    `Helper.start` forks; the child serves requests on a socketpair until the socket closes, then
    cleans up (retracts the keys, removes the pid file) and exits.
    """

    def __init__(self, sock: socket.socket, pid: int, number: int | None) -> None:
        self.sock = sock
        self.pid = pid
        self.number = number
        self.lock = threading.Lock()

    @classmethod
    def start(cls, domain: Domain | Host | None, pidfile: Pidfile | None = None) -> Helper:
        """Fork the root helper; give the DomainSource the helper in place of the domain.

        For --domain all, `domain` is the Host and the helper answers for every domain.

        Call it early, while vncterm has no threads: the fork copies only the calling thread.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            serve_helper(theirs, domain, pidfile)
        theirs.close()
        return cls(ours, pid, domain.number if isinstance(domain, Domain) else None)

    def exists(self) -> bool:
        return self._ask("exists")[0]

    def console_path(self) -> str | None:
        return self._ask("console_path")[0]

    def desktop_address(self) -> tuple[str, int] | None:
        address = self._ask("desktop_address")[0]
        return None if address is None else (address[0], address[1])

    def guest_addresses(self) -> list[str]:
        return self._ask("guest_addresses")[0]

    def open_console(self) -> tuple[str, int]:
        path, fds = self._ask("open_console")
        return path, fds[0]

    def watch(self) -> int:
        return self._ask("watch")[1][0]

    def unwatch(self) -> None:
        self._ask("unwatch")

    def publish(self, keys: dict[str, str]) -> None:
        self._ask("publish", keys)

    def retract(self) -> None:
        self._ask("retract")

    def list_domains(self) -> list[str]:
        return self._ask("list_domains")[0]

    def watch_events(self) -> list[int]:
        return self._ask("watch_events")[1]

    def request(self, name: str, number: int, *arguments):
        """One of DOMAIN_REQUESTS for domain `number`, as Host.request does it."""
        value, fds = self._ask(name, number, *arguments)
        return (value, fds[0]) if name == "open_console" else value

    def close(self) -> None:
        """Tell the helper we are done (it cleans up and exits) and wait for it."""
        self.sock.close()
        os.waitpid(self.pid, 0)

    def _ask(self, request: str, *arguments) -> tuple:
        with self.lock:
            self.sock.send(json.dumps([request, *arguments]).encode())
            message, fds, _, _ = socket.recv_fds(self.sock, 65536, len(EVENT_WATCHES))
        if not message:
            raise OSError(errno.EPIPE, "the privileged helper has exited")
        reply = json.loads(message)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise OSError(reply["errno"], reply["error"])
        return reply["value"], fds


def serve_helper(sock: socket.socket, domain: Domain | Host | None,
                 pidfile: Pidfile | None) -> None:
    """The helper's life: answer requests until the other half goes, clean up, exit."""
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the helper outlives
    # the main process on purpose, so that it can clean up after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status = 0
    try:
        while request := sock.recv(65536):
            reply, fds = answer(domain, request)
            socket.send_fds(sock, [reply], fds)
            for fd in fds:
                os.close(fd)
    except Exception:
        log.exception("privileged helper failed")
        status = 1
    finally:
        if domain is not None:
            domain.unwatch()
            domain.retract()
        if pidfile is not None:
            pidfile.remove()
        os._exit(status)


def answer(domain: Domain | Host | None, request: bytes) -> tuple[bytes, list[int]]:
    """Do one request for the unprivileged half: the reply, and the fds that go with it."""
    try:
        if isinstance(domain, Host):
            name, arguments = parse_host_request(request)
        else:
            name, arguments = parse_request(request, domain)
        if isinstance(domain, Host) and name in DOMAIN_REQUESTS:
            result = domain.request(name, *arguments)
        else:
            result = getattr(domain, name)(*arguments)
    except OSError as error:
        text = error.strerror or str(error)
        return json.dumps({"errno": error.errno or errno.EIO, "error": text}).encode(), []
    if name == "open_console":
        path, fd = result
        return json.dumps({"value": path}).encode(), [fd]
    if name == "watch":
        return json.dumps({"value": None}).encode(), [result]
    if name == "watch_events":
        return json.dumps({"value": None}).encode(), result
    return json.dumps({"value": result}).encode(), []


def parse_request(request: bytes, domain: Domain | None) -> tuple[str, list]:
    """[name] or ["publish", {key: value}], for a known name; OSError(EPERM) for anything else."""
    try:
        message = json.loads(request)
    except ValueError:
        message = None
    if isinstance(message, list) and message and domain is not None:
        name, arguments = message[0], message[1:]
        if name == "publish" and len(arguments) == 1 and is_string_map(arguments[0]):
            return name, arguments
        if name in HELPER_REQUESTS and name != "publish" and not arguments:
            return name, arguments
    raise OSError(errno.EPERM, f"the helper refuses {request[:40]!r}")


def parse_host_request(request: bytes) -> tuple[str, list]:
    """For --domain all: [name] of HOST_REQUESTS, [name, N] of DOMAIN_REQUESTS, or
    ["publish", N, {key: value}], with N a guest's domain id; OSError(EPERM) for anything else."""
    try:
        message = json.loads(request)
    except ValueError:
        message = None
    if isinstance(message, list) and message:
        name, arguments = message[0], message[1:]
        if name in HOST_REQUESTS and not arguments:
            return name, arguments
        number = arguments[0] if arguments else None
        if (name in DOMAIN_REQUESTS and type(number) is int and 0 < number <= MAX_DOMAIN
                and len(arguments) == (2 if name == "publish" else 1)
                and (name != "publish" or is_string_map(arguments[1]))):
            return name, arguments
    raise OSError(errno.EPERM, f"the helper refuses {request[:40]!r}")


def is_string_map(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(item, str) for pair in value.items() for item in pair)


# --- The pid file ---------------------------------------------------------------------------------


class Pidfile:
    """Our pid in a file for service managers; removed only while it still names us."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        with open(path, "w") as file:
            file.write(f"{self.pid}\n")

    def remove(self) -> None:
        try:
            with open(self.path) as file:
                if file.read().strip() != str(self.pid):
                    return
            os.unlink(self.path)
        except OSError as error:
            log.debug("pid file %s: %s", self.path, error)
