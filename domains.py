"""Every domain of a Xen host from one process: `vncterm.py --domain all`.

What.  A host with fifty guests would otherwise run fifty vncterms, each with its own Python,
fonts, threads and watch process.  `Domains` serves them all from one: each guest domain N
gets exactly what `--domain N` gives it (vncterm.start_console with N's ports, base+N), in a
`Slot` whose thread runs that domain's viewer server.  Dom0 is never served: its console is
the host's own, and xenconsoled does not give it a pty.

How.  The domains are the numbered children of /local/domain (`xenstore-list`).  The list is
read at start, and again on every @introduceDomain and @releaseDomain (xen.Events, the three
watches the whole host shares).  A new id gets a Slot at once; an id that has left the list
has its slot retired the way `--domain N` leaves: its viewers read "the domain is gone" on the
status line, the port closes when they go (or after service.GONE_GRACE), and closing the
console source removes its xenstore keys.  A domain usually notices first, through its own
console/tty watch, and retires itself the same way.  A slot whose domain is back by the time
it has ended is started again.  Nothing polls: the main thread sleeps until an event, a slot's
end, or SIGTERM wakes it, and then compares the list with the slots.

Trade-offs.  A slot per domain costs a few threads (the viewer server, the console reader, the
guest desktop's listener), not processes: the number of processes stays at three watches (and
the root helper with --user) however many domains run.  Everything a slot holds is its own, so
a domain whose port is taken, or whose keys are hostile, is logged and skipped without
touching the others.  The one thing slots share is the process: a bug that kills the process
takes every console down at once, where fifty processes would lose one.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import service
import xen

log = logging.getLogger("vncterm.domains")


class Slot:
    """One domain served as `--domain N` would serve it: its ports, console and server thread."""

    def __init__(self, number: int, name: str | None, start, on_end) -> None:
        """Open the domain's ports with `start(number, stops)` -> (Server, Console), start its
        console and its server's thread; `on_end(slot)` once the server has stopped."""
        self.number = number
        self.name = name
        self.on_end = on_end
        self.retired = False
        self.stops = contextlib.ExitStack()
        with self.stops:
            self.server, term = start(number, self.stops)
            term.start()
            self.stops.callback(term.stop)
            self.stops = self.stops.pop_all()
        self.thread = threading.Thread(target=self.run, name=f"domain {number}", daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        print(f"vncterm: domain {number} on {host}:{port}", flush=True)

    def run(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.stops.close()
            self.on_end(self)

    def retire(self) -> None:
        """The domain left the list: tell its viewers and close, as `--domain N` leaves."""
        if not self.retired:
            self.retired = True
            service.leave(self.server)

    def stop(self) -> None:
        """Ask the server to stop, without waiting: join() waits, so that all stop at once."""
        self.server.stop_soon()

    def join(self) -> None:
        self.thread.join()


class Domains:
    """The host's guest domains, each in its Slot, following xenstore's events."""

    def __init__(self, dom0: service.Service, start) -> None:
        """`start(number, plumbing, stops)` serves one domain (vncterm.start_console's work)."""
        self.dom0 = dom0
        self.start = start
        self.slots: dict[int, Slot] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.warned: set[str] = set()
        self.refused: set[int] = set()  # could not be served: waits to leave and come back
        self.events = xen.Events(dom0.domain.watch_events(), self.wake.set)

    def serve(self) -> None:
        """Serve every domain until stop(): look again at each wake-up."""
        self.events.start()
        self.wake.set()
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.stopping:
                break
            self.rescan()
        with self.lock:
            slots = list(self.slots.values())
        for slot in slots:
            slot.stop()
        for slot in slots:
            slot.join()
        self.events.stop()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def rescan(self) -> None:
        """Start a slot for each new domain; retire those whose domain has left the list."""
        try:
            present = xen.domain_ids(self.dom0.domain.list_domains(), self.warned)
        except OSError as error:
            log.warning("cannot list the domains: %s", error)
            return
        with self.lock:
            self.refused &= present
            new = present - self.slots.keys() - self.refused
            gone = [slot for number, slot in self.slots.items() if number not in present]
        for slot in gone:
            slot.retire()
        for number in sorted(new):
            self.open(number)

    def open(self, number: int) -> None:
        """Serve domain `number`; if its ports or parts fail, log it and leave it be."""
        name = self.name_of(number)
        with self.lock:  # held until the slot is known, so that its end finds it
            try:
                self.slots[number] = Slot(number, name, self.start_one, self.ended)
            except (OSError, ValueError) as error:
                log.warning("domain %d is not served: %s", number, error)
                self.refused.add(number)

    def name_of(self, number: int) -> str | None:
        """The domain's name for the browser page, read once when it is first served."""
        try:
            return self.dom0.domain.request("name", number)
        except OSError as error:
            log.warning("domain %d: cannot read its name: %s", number, error)
            return None

    def start_one(self, number: int, stops: contextlib.ExitStack):
        return self.start(number, self.dom0.for_domain(number, self.events), stops)

    def ended(self, slot: Slot) -> None:
        """A slot's server stopped: forget it, and look again (its domain may be back)."""
        with self.lock:
            if self.slots.get(slot.number) is slot:
                del self.slots[slot.number]
        self.wake.set()

    def slot(self, text: str) -> Slot | None:
        """The slot of the domain id `text` (from a URL), if it is served."""
        with self.lock:
            return self.slots.get(int(text)) if text.isascii() and text.isdigit() else None

    def served(self) -> list[Slot]:
        """The slots serving now, by domain id."""
        with self.lock:
            return [slot for _, slot in sorted(self.slots.items())]
