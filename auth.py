"""Who may watch and who may type: VNC authentication, VeNCrypt TLS, limits on strangers.

A viewer proves itself in the security step of the handshake (RFC 6143 §7.1.2-7.2), which
viewer.py runs as straight-line code, with rfb.py parsing each piece (VeNCrypt's messages and
the DES response included); this module holds the policy that code asks about: which security
types to offer, whether a response matches a password, and whether an address has failed too
often.  Like rfb.py it never reads a socket itself.

What is offered, best first (docs/protocol.md, "Security types and VeNCrypt"):

    no TLS:           [VncAuth] with a password, else [None]
    --tls-cert:       [VeNCrypt, VncAuth or None]; VeNCrypt carries X509Vnc with a password,
                      else X509None: never both, or X509None would step around the password
    --tls-only:       [VeNCrypt] only; RFB 3.3 viewers, which cannot choose, are refused
    RFB 3.3:          the one plain type, because 3.3 viewers accept only None and VncAuth

Bare Plain (256) and X509Plain would need a user database to check names against, and
anonymous TLS needs TLS 1.2 with ciphers OpenSSL no longer enables, so neither is offered.

VNC authentication is DES over a 16-byte challenge with the password as key, cut at 8 bytes.
It proves the viewer knows the password without sending it, but it is weak: an eavesdropper
who records one exchange can search the key space offline.  Over VeNCrypt's TLS nobody sees
the exchange, which is why X509Vnc is the combination to use on a network.  The DES itself is
pycryptodome's, in rfb.vnc_auth_response, which the proxy uses towards the guest too.
Responses are compared in constant time.  TLS is the standard library's ssl module, 1.2 or
later, with the operator's certificate, and sends no session tickets: TigerVNC 1.12's viewer
stalls when they arrive with the SecurityResult, and nothing here resumes sessions.

Strangers are kept cheap.  Every failed attempt is logged with the viewer's address and
answered only after `FAILURE_DELAY`, as TigerVNC does; after `BLACKLIST_THRESHOLD` failures an
address is turned away before the security step for `BLACKLIST_TIMEOUT` seconds, twice as long
each time it fails again (TigerVNC's Blacklist).  At most `MAX_UNAUTHENTICATED` connections,
and `MAX_UNAUTHENTICATED_PER_ADDRESS` from one address, may be in the handshake at once; the
server's handshake timeout bounds how long each may take.  A view-only viewer is let in, but
viewer.py drops its keys, pointer and clipboard, and its request for exclusive access.

Defaults (see `start`): a viewer port that others can reach, bound to anything but loopback
or relayed there by the browser console (web.py), needs --password-file, or --insecure to say
the network is trusted.  With no console source given, vncterm serves the user's own shell, so
it makes up a one-time password and prints it, unless --password-file or --no-auth is given.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hmac
import ipaddress
import logging
import os
import secrets
import ssl
import threading
import time

import rfb
from rfb import SecurityType, VeNCryptSubtype

log = logging.getLogger("vncterm.auth")

PASSWORD_LENGTH = 8
FAILURE_DELAY = 0.1
BLACKLIST_THRESHOLD = 5
BLACKLIST_TIMEOUT = 10.0
BLACKLIST_SIZE = 4096
MAX_UNAUTHENTICATED = 16
MAX_UNAUTHENTICATED_PER_ADDRESS = 4
ONE_TIME_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


class Refused(Exception):
    """We turned a viewer away (bad password, blacklisted, too many waiting): log and close."""


class Access(enum.Enum):
    """What a viewer that passed VNC authentication may do."""

    FULL = "full"
    VIEW_ONLY = "view-only"


# --- VNC authentication, RFC 6143 §7.2.2 ----------------------------------------------------


def new_challenge() -> bytes:
    return secrets.token_bytes(rfb.CHALLENGE_LENGTH)


def check_response(challenge: bytes, response: bytes, password: bytes | None,
                   view_only_password: bytes | None) -> Access | None:
    """Which password, if any, the viewer's response to the challenge proves it knows."""
    for access, secret in ((Access.FULL, password), (Access.VIEW_ONLY, view_only_password)):
        if secret is not None and hmac.compare_digest(
                rfb.vnc_auth_response(challenge, secret), response):
            return access
    return None


# --- Limits on strangers ----------------------------------------------------------------------


class Blacklist:
    """Addresses that failed authentication too often, and until when they are turned away."""

    def __init__(self, threshold: int = BLACKLIST_THRESHOLD, timeout: float = BLACKLIST_TIMEOUT,
                 size: int = BLACKLIST_SIZE, clock=time.monotonic) -> None:
        self.threshold, self.timeout, self.size, self.clock = threshold, timeout, size, clock
        self._entries: dict[str, list] = {}  # host: [failures, blocked until, next timeout]
        self._lock = threading.Lock()

    def blocked_for(self, host: str) -> float:
        """Seconds until `host` may try again; 0 if it may now."""
        with self._lock:
            entry = self._entries.get(host)
            return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def failed(self, host: str) -> None:
        with self._lock:
            entry = self._entries.pop(host, None) or [0, 0.0, self.timeout]
            entry[0] += 1
            if entry[0] >= self.threshold:
                entry[1] = self.clock() + entry[2]
                entry[2] *= 2
            self._entries[host] = entry
            if len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]

    def succeeded(self, host: str) -> None:
        with self._lock:
            self._entries.pop(host, None)


class Waiting:
    """Connections still in the handshake, counted in all and per address, with caps on both."""

    def __init__(self, limit: int = MAX_UNAUTHENTICATED,
                 per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS) -> None:
        self.limit, self.per_address = limit, per_address
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, host: str):
        """Hold a place for `host` while the block runs; Refused if there is none."""
        with self._lock:
            if sum(self._counts.values()) >= self.limit:
                raise Refused(f"{self.limit} connections are already in the handshake")
            if self._counts.get(host, 0) >= self.per_address:
                raise Refused(f"{self.per_address} connections from {host} are already in "
                              "the handshake")
            self._counts[host] = self._counts.get(host, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[host] -= 1
                if not self._counts[host]:
                    del self._counts[host]


# --- The policy --------------------------------------------------------------------------------


class Security:
    """What a viewer must do to get in, and the book-keeping that keeps strangers cheap."""

    def __init__(self, password: bytes | None = None, view_only_password: bytes | None = None,
                 tls: ssl.SSLContext | None = None, tls_only: bool = False) -> None:
        self.password = password
        self.view_only_password = view_only_password
        self.tls = tls
        self.tls_only = tls_only
        self.blacklist = Blacklist()
        self.waiting = Waiting()

    def refusal(self, version: tuple[int, int], host: str) -> str | None:
        """Why this viewer gets no security offer at all, or None."""
        wait = self.blacklist.blocked_for(host)
        if wait:
            return f"too many authentication failures; try again in {wait:.0f} s"
        if self.tls_only and version == rfb.VERSION_3_3:
            return "this server requires TLS (VeNCrypt), which RFB 3.3 cannot negotiate"
        return None

    def types(self, version: tuple[int, int]) -> list[int]:
        """The security types to offer, best first."""
        plain = [SecurityType.VNC_AUTHENTICATION if self.password else SecurityType.NONE]
        if self.tls is None or version == rfb.VERSION_3_3:
            return plain
        vencrypt = SecurityType.VENCRYPT
        return [vencrypt] if self.tls_only else [vencrypt, *plain]

    @property
    def subtypes(self) -> list[int]:
        return [VeNCryptSubtype.X509_VNC if self.password else VeNCryptSubtype.X509_NONE]

    def check(self, challenge: bytes, response: bytes) -> Access | None:
        return check_response(challenge, response, self.password, self.view_only_password)


# --- Command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("viewer authentication and TLS")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--password-file", metavar="F",
                        help="viewers need this VNC password (first line of F; 8 characters "
                             "count)")
    choice.add_argument("--no-auth", action="store_true",
                        help="no one-time password for the embedded shell")
    group.add_argument("--viewonly-password-file", metavar="F",
                       help="a second password for viewers that only watch")
    group.add_argument("--tls-cert", metavar="F", help="PEM certificate (chain) for VeNCrypt TLS")
    group.add_argument("--tls-key", metavar="F", help="PEM private key, if not in --tls-cert")
    group.add_argument("--tls-only", action="store_true", help="refuse viewers without TLS")
    group.add_argument("--insecure", action="store_true",
                       help="allow --listen on a non-loopback address without --password-file")


def start(args, address: tuple[str, int]) -> Security:
    """The policy for viewers, from the options checked against the viewer port's bound address."""
    password = read_password(args.password_file)
    view_only_password = read_password(args.viewonly_password_file)
    check_passwords(password, view_only_password)
    if args.tls_only and not args.tls_cert:
        raise ValueError("--tls-only needs --tls-cert")
    if args.tls_only and getattr(args, "web", None) is not None:
        raise ValueError("--tls-only would lock out the browser console: noVNC has no VeNCrypt "
                         "TLS; protect browsers with --web-cert instead")
    exposed = [host for host in exposed_addresses(args, address) if not is_loopback(host)]
    if password is None and exposed and not args.insecure:
        raise ValueError(
            f"refusing to serve viewers on {exposed[0] or 'every address'} without "
            "--password-file: anyone who reaches it could watch and type into the console. "
            "Give --password-file (with --tls-cert on an untrusted network), listen on "
            "127.0.0.1, or say --insecure")
    if password is None and serves_own_shell(args) and not args.no_auth:
        password = one_time_password()
        print(f"vncterm: one-time password for viewers: {password.decode()} "
              "(--password-file F or --no-auth instead)", flush=True)
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    return Security(password, view_only_password, tls, args.tls_only)


def read_password(path: str | None) -> bytes | None:
    """The first line of the file at `path`, refused if empty; warns about what VNC ignores."""
    if path is None:
        return None
    with open(path, "rb") as file:
        password = file.readline().rstrip(b"\r\n")
        mode = os.fstat(file.fileno()).st_mode
    if not password:
        raise ValueError(f"{path}: the first line is empty; a VNC password needs 1-8 characters")
    if len(password) > PASSWORD_LENGTH:
        log.warning("%s: VNC authentication uses only the first %d characters", path,
                    PASSWORD_LENGTH)
    if mode & 0o077:
        log.warning("%s: other users may read this password (chmod 600 it)", path)
    return password


def check_passwords(password: bytes | None, view_only_password: bytes | None) -> None:
    if view_only_password is None:
        return
    if password is None:
        raise ValueError("--viewonly-password-file needs --password-file")
    if password[:PASSWORD_LENGTH] == view_only_password[:PASSWORD_LENGTH]:
        raise ValueError("the view-only password must differ from the password in its first "
                         f"{PASSWORD_LENGTH} characters")


def exposed_addresses(args, address: tuple[str, int]) -> list[str]:
    """Where viewers can reach the console: our port, and the browser relay's (web.py)."""
    addresses = [address[0]]
    if getattr(args, "web", None) is not None:
        addresses.append(args.web_listen)
    return addresses


def is_loopback(host: str) -> bool:
    """True for a loopback address or "localhost"; any other name counts as exposed."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serves_own_shell(args) -> bool:
    """True for the embedded default: no console source was named."""
    return not (args.pty or args.serial or args.command or args.domain is not None)


def one_time_password() -> bytes:
    return "".join(secrets.choice(ONE_TIME_ALPHABET) for _ in range(PASSWORD_LENGTH)).encode()


def tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server-side TLS context (1.2 or later) with the operator's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # see the module's essay
    try:
        context.load_cert_chain(cert, key)
    except OSError as error:  # ssl.SSLError included
        raise ValueError(f"cannot load the TLS certificate {cert} / key {key or cert}: "
                         f"{error.strerror or error}") from error
    return context
