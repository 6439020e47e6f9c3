"""Who may watch and who may type: VNC authentication, VeNCrypt TLS, limits on strangers.

A viewer proves itself in the security step of the handshake (RFC 6143 §7.1.2-7.2), which
viewer.py runs as straight-line code, with rfb.py parsing each piece (VeNCrypt's messages and
the DES response included); this module holds the policy that code asks about: which security
types to offer, whether a response matches a password, and when strangers are let in and
checked.  Like rfb.py it never reads a socket itself.

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

Strangers are kept cheap, and none of them can lock the others out.

Idle sockets.  At most `MAX_UNAUTHENTICATED` connections, and `MAX_UNAUTHENTICATED_PER_ADDRESS`
from one address, hold a place in the handshake (`Waiting`).  A connection must send its
version within `VERSION_TIMEOUT`, far sooner than the server's handshake deadline, because
every viewer answers the server's version at once.  When a cap is full, a newcomer evicts the
oldest place that has sent nothing for `EVICTION_GRACE`; if there is none it may still send
its version, and having talked it evicts any silent place.  So a real viewer gets in past any
number of silent sockets, and attackers that reconnect when closed cannot evict each other in
a loop: the grace stops them.  Only when every place is held by a connection that talks is a
newcomer refused, with the reason in the security step, which every RFB version can carry.
Those refusals are capped in number too; past that a connection is closed without a word.

Password guessing.  Every password check takes a turn (`Turns`): after a quiet spell
`CHECK_BURST` may go at once, then one every `CHECK_INTERVAL`, across all sources together.
The check waits for its turn, it is not refused, and the answer comes only after it, so an
attacker learns nothing sooner by hanging up.  The queue is short because every check holds a
place in the handshake while it waits, and the handshake's deadline is moved by the wait.  At
one guess a second an 8-character VNC password cannot be searched online, whatever the number
of addresses.  Nothing is remembered per address: TigerVNC's blacklist, which this replaces,
let an attacker on a viewer's own address (every browser behind web.py shares one) keep the
right password out, and let a viewer's success wipe out the attacker's record.  The price is
that the attacker's guesses and the viewer's check share one queue: the viewer waits a turn for
each guess ahead of it, and an attacker that keeps every place of the viewer's address, or
every place of all, talking and waiting is a denial of service (never a way in) until it
stops.  A failed answer also waits `FAILURE_DELAY`, as TigerVNC's does.  A view-only viewer is
let in, but viewer.py drops its keys, pointer and clipboard, and its request for exclusive
access.

Defaults (see `start`): a viewer port that others can reach, bound to anything but loopback
or relayed there by the browser console (web.py), needs --password-file, or --insecure to say
the network is trusted.  With no console source given, vncterm serves the user's own shell, so
it makes up a one-time password and prints it, unless --password-file or --no-auth is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import hmac
import ipaddress
import logging
import math
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable

import rfb
from rfb import SecurityType, VeNCryptSubtype

log = logging.getLogger("vncterm.auth")

PASSWORD_LENGTH = 8
FAILURE_DELAY = 0.1
CHECK_INTERVAL = 1.0
CHECK_BURST = 3
VERSION_TIMEOUT = 3.0
EVICTION_GRACE = 1.0
MAX_UNAUTHENTICATED = 16
MAX_UNAUTHENTICATED_PER_ADDRESS = 4
ONE_TIME_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


class Refused(Exception):
    """We turned a viewer away (bad password, too many waiting): log and close."""


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


class Turns:
    """Password checks take turns: `burst` at once after a quiet spell, then one per `interval`."""

    def __init__(self, interval: float = CHECK_INTERVAL, burst: int = CHECK_BURST,
                 clock=time.monotonic, sleep=time.sleep) -> None:
        self.interval, self.burst, self.clock, self.sleep = interval, burst, clock, sleep
        self._next = -math.inf
        self._lock = threading.Lock()

    def book(self) -> float:
        """Book the next free turn; the seconds from now until it comes."""
        with self._lock:
            now = self.clock()
            turn = max(self._next, now - (self.burst - 1) * self.interval)
            self._next = turn + self.interval
            return max(0.0, turn - now)

    def wait(self) -> float:
        """Book a turn and sleep until it comes; the seconds slept."""
        delay = self.book()
        if delay:
            self.sleep(delay)
        return delay


@dataclasses.dataclass(eq=False)
class Place:
    """One connection's place in the handshake; with a `refusal` it is only waiting to be told."""

    host: str
    evict: Callable[[], None]
    since: float
    refusal: str | None = None
    talking: bool = False


class Waiting:
    """Connections still in the handshake, oldest first, with caps on all and per address."""

    def __init__(self, limit: int = MAX_UNAUTHENTICATED,
                 per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS,
                 grace: float = EVICTION_GRACE, clock=time.monotonic) -> None:
        self.limit, self.per_address, self.grace, self.clock = limit, per_address, grace, clock
        self._places: list[Place] = []
        self._refusing = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def admit(self, host: str, evict: Callable[[], None]):
        """Hold a Place for `host` while the block runs; Refused if not even a refusal fits."""
        place = Place(host, evict, self.clock())
        with self._lock:
            place.refusal = self._make_room(host, place.since - self.grace)
            if place.refusal is None:
                self._places.append(place)
            elif self._refusing < self.limit:
                self._refusing += 1
            else:
                raise Refused(place.refusal)
        try:
            yield place
        finally:
            with self._lock:
                if place in self._places:
                    self._places.remove(place)
                elif place.refusal is not None:
                    self._refusing -= 1

    def talked(self, place: Place) -> None:
        """The viewer sent its version: one still waiting may now evict any silent place."""
        with self._lock:
            place.talking = True
            if place.refusal is None:
                return
            place.refusal = self._make_room(place.host, math.inf)
            if place.refusal is None:
                self._refusing -= 1
                self._places.append(place)

    def _make_room(self, host: str, born_by: float) -> str | None:
        """Evict the oldest silent place opened by `born_by` in the cap `host` meets, or say why."""
        same = [place for place in self._places if place.host == host]
        if len(same) >= self.per_address:
            scope = same
            reason = f"{self.per_address} connections from {host} are already in the handshake"
        elif len(self._places) >= self.limit:
            scope = self._places
            reason = f"{self.limit} connections are already in the handshake"
        else:
            return None
        victim = next((place for place in scope
                       if not place.talking and place.since <= born_by), None)
        if victim is None:
            return reason
        log.info("a silent connection from %s made room for one from %s", victim.host, host)
        self._places.remove(victim)
        victim.evict()
        return None


# --- The policy --------------------------------------------------------------------------------


class Security:
    """What a viewer must do to get in, and the book-keeping that keeps strangers cheap."""

    def __init__(self, password: bytes | None = None, view_only_password: bytes | None = None,
                 tls: ssl.SSLContext | None = None, tls_only: bool = False) -> None:
        self.password = password
        self.view_only_password = view_only_password
        self.tls = tls
        self.tls_only = tls_only
        self.turns = Turns()
        self.waiting = Waiting()

    def refusal(self, version: tuple[int, int]) -> str | None:
        """Why this viewer gets no security offer at all, or None."""
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
