"""Privilege separation for `--user`: a forked helper keeps root, the rest of vncterm drops it.

What.  Two things need root: reading and writing xenstore (xenstored's socket and
/dev/xen/xenbus belong to root alone), and opening the pty. xenconsoled creates each pty owned
by root with mode 0620, so group tty may write to it but not read it. Both are needed again at
every reboot. Dropping root for good would lose the console at the first reboot. Keeping root
as the saved uid would make dropping pointless, because any code that runs could take root
back. So with --user, vncterm splits in two, as OpenSSH's privilege separation does.

How.  Before any thread starts, `Helper.start` forks a helper that stays root and serves nine
requests, all about domain N only: exists, console_path, open_console, watch, unwatch, publish
(keys and values checked against a fixed list), retract, guest_addresses and desktop_address.
The unprivileged half holds the `Helper`, which a `xen.DomainSource` takes in place of its
`xen.Domain`. Requests and replies are JSON on a SOCK_SEQPACKET socketpair; the opened pty and
the watch's pipe come back as file descriptors over the socket (SCM_RIGHTS). However vncterm
ends, even by SIGKILL, the helper sees its socket close. It then removes the published keys and
the pid file (service.Pidfile), and exits. With --domain all the helper serves the whole host
(xenhost.Host): the same requests, each with a domain id, plus `list_domains` and
`watch_events`.

Trust.  No request takes a path, so the unprivileged half, which parses everything viewers and
the guest send, cannot ask for any other file or key. A request that is not one of the fixed
forms (`parse_request`, `parse_host_request`) is refused with EPERM.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import threading

import xen
from xenhost import EVENT_WATCHES, Host

log = logging.getLogger("vncterm.xen")

HELPER_REQUESTS = ("exists", "console_path", "open_console", "watch", "unwatch", "publish",
                   "retract", "guest_addresses", "desktop_address")
DOMAIN_REQUESTS = ("exists", "name", "console_path", "open_console", "publish", "retract",
                   "guest_addresses", "desktop_address")
HOST_REQUESTS = ("list_domains", "watch_events")


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
    def start(cls, domain: xen.Domain | Host | None, pidfile=None) -> Helper:
        """Fork the root helper; give the DomainSource the helper in place of the domain.

        For --domain all, `domain` is the Host and the helper answers for every domain. The
        helper removes `pidfile` (a service.Pidfile), if given, when it exits.

        Call it early, while vncterm has no threads: the fork copies only the calling thread.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            serve_helper(theirs, domain, pidfile)
        theirs.close()
        return cls(ours, pid, domain.number if isinstance(domain, xen.Domain) else None)

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


def serve_helper(sock: socket.socket, domain: xen.Domain | Host | None, pidfile) -> None:
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


def answer(domain: xen.Domain | Host | None, request: bytes) -> tuple[bytes, list[int]]:
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


def parse_request(request: bytes, domain: xen.Domain | None) -> tuple[str, list]:
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
        if (name in DOMAIN_REQUESTS and type(number) is int and 0 < number <= xen.MAX_DOMAIN
                and len(arguments) == (2 if name == "publish" else 1)
                and (name != "publish" or is_string_map(arguments[1]))):
            return name, arguments
    raise OSError(errno.EPERM, f"the helper refuses {request[:40]!r}")


def is_string_map(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(item, str) for pair in value.items() for item in pair)
