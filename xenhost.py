"""Every domain of the host from one set of watches: xenstore for `vncterm.py --domain all`.

What.  `Host` is xenstore for the whole host, and `Events` turns three watches into everything
the host's domains need to know. `HostDomain` is one domain as its `xen.DomainSource` sees it:
the same requests as `xen.Domain`, sent to the Host (or to the root helper, roothelper.py) with
the domain's id, and a watch that is a subscription to the shared Events. domains.py runs a
console per domain on top of these.

How.  `xenstore-watch @introduceDomain` and `@releaseDomain` are xenstored's special events,
the ones Xen's own tools follow: each line means "list /local/domain again" (`xenstore-list`).
`xenstore-watch /local/domain` prints the path of every write under any domain; `Events` hands
each domain's changes to its watched keys (xen.WATCHED_KEYS, and the removal of its
directory) to that domain's `DomainSource` through a pipe of its own, in place of the
per-domain watch process.

Trade-offs.  A host runs three watch processes however many domains it has. The price is that
every write any guest makes under its own directory is one line for us to read and drop: a
line costs a read and a prefix test, never a process. The domain ids come from directory
names, which we check: a name that is not a number, dom0, or an id past xen.MAX_DOMAIN is
logged once and ignored. A domain's `name` key is shown to browsers, so a name with control
characters is logged and not shown (xen.Domain.name).
"""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import threading

import xen

log = logging.getLogger("vncterm.xen")

ALL = "all"
DOMAINS = "/local/domain"
EVENT_WATCHES = ("@introduceDomain", "@releaseDomain", DOMAINS)
# The domain itself, or xen.WATCHED_KEYS under it: what each domain's own watch would report.
DOMAIN_LINE = re.compile(r"/local/domain/([0-9]{1,5})(/console(/.*)?|/serial/0/tty(/.*)?)?")


def domain_ids(names: list[str], warned: set[str]) -> set[int]:
    """The guest domain ids among /local/domain's children; each bad name logged once."""
    found = set()
    for name in names:
        number = int(name) if name.isascii() and name.isdigit() else None
        if number is not None and 0 < number <= xen.MAX_DOMAIN:
            found.add(number)
        elif number != 0 and name not in warned:
            warned.add(name)
            log.warning("ignoring %s/%s: not a domain id", DOMAINS, repr(name)[:40])
    return found


class Host:
    """xenstore for every domain: the list, the three event watches, each domain's requests."""

    def __init__(self, xenstore: xen.Xenstore) -> None:
        self.xenstore = xenstore
        self.domains: dict[int, xen.Domain] = {}
        self.watchers: list[subprocess.Popen] = []

    def list_domains(self) -> list[str]:
        return self.xenstore.list(DOMAINS)

    def watch_events(self) -> list[int]:
        """Start the three event watches (EVENT_WATCHES); fds of their lines the caller owns."""
        self.unwatch()
        self.watchers = [self.xenstore.watch(path) for path in EVENT_WATCHES]
        return [os.dup(watcher.stdout.fileno()) for watcher in self.watchers]

    def request(self, name: str, number: int, *arguments):
        """Run one of `xen.Domain`'s requests (roothelper.DOMAIN_REQUESTS) for domain `number`."""
        domain = self.domains.get(number)
        if domain is None:
            domain = self.domains[number] = xen.Domain(number, self.xenstore)
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

    def __init__(self, number: int, host: Host, events: Events) -> None:
        self.number = xen.check_domain(number)
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
