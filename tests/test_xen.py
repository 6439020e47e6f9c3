"""xen.py: domain N's console through a fake xenstore, and `vncterm.py --domain N` end to end.

The Xen side is faked, and nothing else is. tests/fakexenstore.py stands in for xenstored and
its four command-line tools. A pty pair stands in for the console xenconsoled makes: the test
holds the master end, as xenconsoled does, and vncterm opens the slave named in
`console/tty`. Everything on vncterm's side is real: a `console.Console` reader thread, or the
whole `vncterm.py` process seen by vncdotool.

The stories are the ones a dom0 lives through. The domain starts after vncterm. The guest
reboots, and its console moves to a new pty. The domain is destroyed. A hostile key names a file
that is not a pty. The ports are published and removed again. vncterm runs as `nobody` with a
root helper. The end-to-end tests at the bottom drive the `vncterm.py --domain` command line.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import console
import fakexenstore
import keymap
import peers
import service
import xen
from fakexen import (
    DOMAIN,
    DOMAIN_PATH,
    PORT_KEY,
    REVERSE_KEY,
    TTY_KEY,
    VncTermDomain,
    desktop_address,
    readable,
    shows,
    status_is,
)
from harness import screen_text
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
REBOOTED = (Block("red", 40, 10), Block("green", 2, 22), Block("blue", 72, 1))


# --- The tools ------------------------------------------------------------------------------


def test_xenstore_reads_writes_and_removes(fake):
    xenstore = fake.xenstore
    assert xenstore.read(TTY_KEY) is None
    xenstore.write(TTY_KEY, "/dev/pts/3")
    assert xenstore.read(TTY_KEY) == "/dev/pts/3"
    assert xenstore.read(DOMAIN_PATH) == ""
    xenstore.rm(DOMAIN_PATH)
    assert xenstore.read(TTY_KEY) is None
    assert xenstore.missing_tools() == []


def test_xenstore_prefix_may_hold_words(fake):
    """The multi-call form (`xenstore read KEY`), here as `python fakexenstore.py STORE read`."""
    script = fakexenstore.__file__
    xenstore = xen.Xenstore(f"'{sys.executable}' '{script}' '{fake.store.path}' ")
    xenstore.write(TTY_KEY, "/dev/pts/9")
    assert fake.xenstore.read(TTY_KEY) == "/dev/pts/9"


def test_prefix_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(xen.PREFIX_VARIABLE, "/opt/xen/bin/xenstore-")
    assert xen.Xenstore().command("read") == ["/opt/xen/bin/xenstore-read"]
    assert xen.Xenstore("xenstore ").command("watch") == ["xenstore", "watch"]


def test_a_broken_xenstore_is_an_error_not_a_missing_key(tmp_path):
    tool = tmp_path / "xenstore-read"
    tool.write_text("#!/bin/sh\necho 'xs_open: Permission denied' >&2\nexit 1\n")
    tool.chmod(0o755)
    with pytest.raises(xen.XenstoreError, match="Permission denied"):
        xen.Xenstore(f"{tmp_path}/xenstore-").read(TTY_KEY)


def test_the_watch_fires_on_every_write_and_when_the_domain_goes(fake):
    fake.store.write(TTY_KEY, "/dev/pts/3")
    watch = fake.xenstore.watch(TTY_KEY)
    try:
        assert readable(watch.stdout, 10)
        assert watch.stdout.readline() == f"{TTY_KEY}\n".encode()
        fake.store.write(TTY_KEY, "/dev/pts/3")
        assert readable(watch.stdout, 10), "the same value written again fires"
        assert watch.stdout.readline() == f"{TTY_KEY}\n".encode()
        fake.store.rm(DOMAIN_PATH)
        assert readable(watch.stdout, 10)
        assert watch.stdout.readline() == f"{TTY_KEY}\n".encode()
    finally:
        watch.kill()
        watch.wait()
        watch.stdout.close()


@pytest.mark.parametrize("path", ["/dev/pts/0", "/dev/pts/17"])
def test_pty_paths_are_accepted(path):
    assert xen.check_pty_path(path) == path


@pytest.mark.parametrize("path", [
    "/dev/sda", "/etc/shadow", "/dev/pts/../sda", "/dev/pts/3\n", "/dev/pts/ptmx", "dev/pts/3",
    "/dev/pts/3/x", "/dev/tty1", " /dev/pts/3", "/dev/pts/", "/dev/pts/12345678",
])
def test_anything_else_is_refused(path):
    with pytest.raises(OSError, match="refused"):
        xen.check_pty_path(path)


def test_ports_and_their_keys():
    assert xen.default_ports(7) == (5907, 5507)
    assert xen.adverts(5907, ("192.0.2.1", 5507)) == {
        "console/vnc-port": "5907", "console/vnc-reverse": "192.0.2.1:5507"}
    assert xen.adverts(5907, ("fd00::1", 5507))["console/vnc-reverse"] == "[fd00::1]:5507"
    assert xen.adverts(5907, ("0.0.0.0", 5507)) == {"console/vnc-port": "5907"}
    with pytest.raises(ValueError):
        xen.check_domain(0x7FF0)


# --- The source in a real Console -----------------------------------------------------------


def test_waits_for_the_console_without_polling_then_attaches(fake, guests, run_console):
    fake.store.write(f"{DOMAIN_PATH}/name", "guest")
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert "waiting for domain 7: no console/tty" in status_is(term, "no console/tty")
    time.sleep(1.5)  # the watch's first line arrives, and is answered with one more look
    reads = len(fake.store.calls("read"))
    time.sleep(2.5)  # two more of the Console's once-a-second retries, without the hook
    assert len(fake.store.calls("read")) == reads, "xenstore was asked although nothing changed"
    assert len(fake.store.calls("watch")) == 1
    guest = guests()
    fake.store.write(TTY_KEY, guest.path)
    assert status_is(term, "") == ""
    guest.say(b"Linux version 6.1 booting\r\n")
    assert shows(term, "Linux version 6.1 booting")
    term.key(ord("x"), keymap.Modifiers())
    assert guest.heard(1) == b"x"


def attached_console(fake, guests, run_console):
    """A started domain's pty, and a Console attached to it."""
    first = guests()
    fake.start_domain(first)
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert status_is(term, "") == ""
    return first, term


def new_pty(fake, guests, term, timeout=15.0):
    """The console key names a new pty, as after a reboot; the Console must follow it."""
    second = guests()
    fake.store.write(TTY_KEY, second.path)
    assert peers.wait_until(lambda: term.source.path == second.path, timeout=timeout)
    return second


def test_reboot_moves_the_console_to_a_new_pty(fake, guests, run_console):
    first, term = attached_console(fake, guests, run_console)
    first.say(b"first boot\r\n")
    assert shows(term, "first boot")
    first.hang_up()
    second = new_pty(fake, guests, term)
    second.say(b"second boot\r\n")
    assert shows(term, "second boot")
    term.key(ord("y"), keymap.Modifiers())
    assert second.heard(1) == b"y"


def test_a_new_pty_is_followed_even_if_the_old_one_never_hangs_up(fake, guests, run_console):
    """Needs the Console to wait on watch_fileno() while attached (the proposed console.py hook)."""
    _, term = attached_console(fake, guests, run_console)
    second = new_pty(fake, guests, term, timeout=5)
    second.say(b"on the new pty\r\n")
    assert shows(term, "on the new pty")


def test_a_destroyed_domain_is_reported_once(fake, guests, run_console):
    gone = []
    guest = guests()
    fake.start_domain(guest)
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore), on_gone=lambda: gone.append(1))
    term = run_console(source)
    assert status_is(term, "") == ""
    fake.destroy_domain(guest)
    assert "the domain is gone" in status_is(term, "the domain is gone")
    time.sleep(2.5)  # time for the Console to retry, and for a second report if there were one
    assert len(gone) == 1
    assert fake.store.read(DOMAIN_PATH) is None


def test_with_stay_a_domain_that_comes_back_is_attached_again(fake, guests, run_console):
    guest = guests()
    fake.start_domain(guest)
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert status_is(term, "") == ""
    fake.destroy_domain(guest)
    assert status_is(term, "the domain is gone")
    again = guests()
    fake.start_domain(again)
    assert status_is(term, "") == ""
    again.say(b"back again\r\n")
    assert shows(term, "back again")


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_key_naming_anything_but_a_pty_is_refused_unopened(fake, run_console, tmp_path, kind):
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.write_text("secret\n")
    fake.store.write(TTY_KEY, str(target))
    term = run_console(xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore)))
    assert "refused tty" in status_is(term, "refused")
    assert len(term.status) <= 80
    if kind == "fifo":
        with pytest.raises(OSError):  # ENXIO: nobody has the FIFO open for reading
            os.open(target, os.O_WRONLY | os.O_NONBLOCK)
    assert "secret" not in screen_text(term)


def test_ports_are_published_when_the_console_appears_and_removed_on_close(fake, guests):
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore),
                              adverts=xen.adverts(5907, ("192.0.2.1", 5507)))
    term = console.Console(source, 80, 25)
    term.start()
    try:
        assert status_is(term, "no such domain")
        assert fake.store.read(DOMAIN_PATH) is None, "publishing early would fake a domain"
        guest = guests()
        fake.start_domain(guest)
        assert status_is(term, "") == ""
        assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == "5907")
        assert fake.store.read(REVERSE_KEY) == "192.0.2.1:5507"
    finally:
        term.stop()
        source.close()
    assert fake.store.read(PORT_KEY) is None and fake.store.read(REVERSE_KEY) is None
    assert fake.store.read(TTY_KEY) == guest.path


def test_publishing_into_a_vanished_domain_leaves_no_ghost_directory(fake):
    fake.store.write(f"/local/domain/{DOMAIN + 1}/name", "neighbour")
    xen.Domain(DOMAIN, fake.xenstore).publish(xen.adverts(5907, ("192.0.2.1", 5507)))
    assert fake.store.load() == {"/local": "", "/local/domain": "",
                                 f"/local/domain/{DOMAIN + 1}": "",
                                 f"/local/domain/{DOMAIN + 1}/name": "neighbour"}


def test_only_known_keys_with_checked_values_are_published(fake):
    domain = xen.Domain(DOMAIN, fake.xenstore)
    for keys in ({"console/tty": "/etc/shadow"}, {"console/vnc-port": "1\\x0a"},
                 {"console/vnc-reverse": "host:1 extra:2"}):
        with pytest.raises(OSError, match="refused"):
            domain.publish(keys)
    assert fake.store.load() == {}


# --- Privilege separation -------------------------------------------------------------------


def test_the_helper_does_the_privileged_part_and_cleans_up(fake, guests, tmp_path):
    pidfile = xen.Pidfile(str(tmp_path / "vncterm.pid"))
    helper = xen.Helper.start(xen.Domain(DOMAIN, fake.xenstore), pidfile)
    source = xen.DomainSource(helper, adverts=xen.adverts(5907))
    assert source.domain is helper
    guest = guests()
    fake.start_domain(guest)
    term = console.Console(source, 80, 25)
    term.start()
    try:
        assert status_is(term, "") == ""
        guest.say(b"through the helper\r\n")
        assert shows(term, "through the helper")
        assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == "5907")
        for request in (("open", "/etc/shadow"), ("read", "/local/domain/0/x"), ("exists", 1),
                        ("publish", {"console/vnc-port": 5900}), ("publish", "console/tty")):
            with pytest.raises(OSError, match="refuses") as refusal:
                helper._ask(*request)
            assert refusal.value.errno == 1
        with pytest.raises(OSError, match="refused to publish"):
            helper.publish({"console/tty": "/dev/sda"})
    finally:
        term.stop()
        helper.close()
    assert fake.store.read(PORT_KEY) is None, "the helper retracts even if vncterm did not"
    assert not os.path.exists(pidfile.path)


USER_DRIVER = textwrap.dedent("""\
    import json, os, sys
    import console, service, xen
    helper = xen.Helper.start(xen.Domain(int(sys.argv[1]), xen.Xenstore(sys.argv[2])))
    source = xen.DomainSource(helper)
    service.drop_privileges("nobody")
    term = console.Console(source, 80, 25)
    term.start()
    for line in sys.stdin:
        with term.lock:
            text = "\\n".join(term.terminal.display)
        print(json.dumps({"uid": os.getresuid(), "status": term.status, "text": text}), flush=True)
    term.stop()
    source.close()
    helper.close()
""")


def test_as_nobody_the_console_survives_a_reboot(fake, guests, tmp_path):
    peers.require("root", installed=os.geteuid() == 0, how="run the tests as root, as CI does")
    first = guests()
    fake.start_domain(first)
    mode = os.stat(first.path)
    assert mode.st_uid == 0 and mode.st_mode & 0o004 == 0, "the pty must be root's alone"
    driver = subprocess.Popen(
        [sys.executable, "-c", USER_DRIVER, str(DOMAIN), fake.prefix], cwd=peers.REPO,
        env=dict(os.environ, PYTHONPATH=str(peers.REPO)), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)

    def look():
        driver.stdin.write("\n")
        driver.stdin.flush()
        return json.loads(driver.stdout.readline())

    try:
        assert peers.wait_until(lambda: look()["status"] == "")
        first.say(b"hello from root's pty\r\n")
        assert peers.wait_until(lambda: "hello from root's pty" in look()["text"])
        assert look()["uid"] == [65534, 65534, 65534]
        first.hang_up()
        second = guests()
        fake.store.write(TTY_KEY, second.path)
        assert peers.wait_until(lambda: look()["status"] == "")
        second.say(b"rebooted, reopened by the helper\r\n")
        assert peers.wait_until(lambda: "reopened by the helper" in look()["text"])
    finally:
        driver.stdin.close()
        assert driver.wait(20) == 0


# --- Service plumbing -----------------------------------------------------------------------


def test_pidfile_is_removed_only_while_it_names_us(tmp_path):
    pidfile = xen.Pidfile(str(tmp_path / "a.pid"))
    assert (tmp_path / "a.pid").read_text() == f"{os.getpid()}\n"
    pidfile.remove()
    assert not (tmp_path / "a.pid").exists()
    other = xen.Pidfile(str(tmp_path / "b.pid"))
    (tmp_path / "b.pid").write_text("1\n")
    other.remove()
    assert (tmp_path / "b.pid").exists()


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_syslog_gets_one_line_per_viewer_event(tmp_path, restore_logging):
    address = str(tmp_path / "log")
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(address)
    syslog.settimeout(5)
    try:
        service.setup_logging(syslog=True, syslog_address=address)
        logging.getLogger("vncterm").info("viewer %s connected", "192.0.2.9:40000")
        message = syslog.recv(4096).decode()
    finally:
        syslog.close()
    assert message.startswith("<30>vncterm[")  # facility daemon (3) * 8 + severity info (6)
    assert message.rstrip("\0").endswith("vncterm: viewer 192.0.2.9:40000 connected")


def test_syslog_without_a_listener_is_a_clear_error(tmp_path, restore_logging):
    with pytest.raises(OSError, match="no syslog socket"):
        service.setup_logging(syslog=True, syslog_address=str(tmp_path / "missing"))


def test_log_file_gets_viewer_events(tmp_path, restore_logging):
    path = tmp_path / "vncterm.log"
    service.setup_logging(path=str(path))
    logging.getLogger("vncterm").info("viewer %s disconnected", "127.0.0.1:5")
    assert "vncterm: viewer 127.0.0.1:5 disconnected" in path.read_text()


# --- vncterm.py --domain N, end to end (the command line proposed for vncterm.py) -------------


@pytest.fixture
def start_vncterm_domain(fake, artifacts):
    """start_vncterm_domain(options=()) -> VncTermDomain; killed at teardown if still running."""
    started = []

    def start(options=()):
        started.append(VncTermDomain(fake, artifacts, options))
        return started[-1]

    yield start
    for server in started:
        server.__exit__()


def test_vncterm_domain_from_boot_through_reboot_to_sigterm(fake, guests, start_vncterm_domain):
    peers.require("vncdotool")
    server = start_vncterm_domain()
    pid = int(server.pidfile.read_text())
    assert pid == server.proc.pid
    time.sleep(1)  # time to publish too early, if it were going to
    assert fake.store.read(DOMAIN_PATH) is None, "nothing is published before the domain exists"
    first = guests()
    fake.start_domain(first)
    assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == str(server.port)), server.report()
    reverse = peers.wait_until(lambda: fake.store.read(REVERSE_KEY))
    assert reverse == peers.wait_until(lambda: desktop_address(server)), server.report()
    assert not reverse.endswith(":0")
    assert not server.shows(first, PATTERN, "first-boot")
    peers.vncdo(server, "type", "ls", "key", "enter")
    assert first.heard(3) == b"ls\r"
    first.hang_up()
    second = guests()
    fake.store.write(TTY_KEY, second.path)
    assert not server.shows(second, REBOOTED, "rebooted")
    server.stop()
    assert fake.store.read(PORT_KEY) is None and fake.store.read(REVERSE_KEY) is None
    assert not server.pidfile.exists()
    events = peers.read_text(server.folder / "events.log")
    assert events.count("viewer 127.0.0.1:") >= 4, events
    assert "connected" in events and "disconnected" in events


def test_vncterm_exits_when_the_domain_is_destroyed(fake, guests, start_vncterm_domain):
    guest = guests()
    fake.start_domain(guest)
    server = start_vncterm_domain()
    assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == str(server.port))
    fake.destroy_domain(guest)
    assert server.proc.wait(service.GONE_GRACE + 15) == 0, server.report()
    assert fake.store.read(DOMAIN_PATH) is None, "exiting must not recreate the domain directory"
    assert not server.pidfile.exists()


def test_vncterm_with_stay_outlives_the_domain(fake, guests, start_vncterm_domain):
    guest = guests()
    fake.start_domain(guest)
    server = start_vncterm_domain(["--stay"])
    assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == str(server.port))
    fake.destroy_domain(guest)
    peers.wait_until(lambda: server.proc.poll() is not None, timeout=service.GONE_GRACE + 3)
    assert server.proc.poll() is None, server.report()
    again = guests()
    fake.start_domain(again)
    assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == str(server.port))
    server.stop()


def test_vncterm_as_nobody_keeps_the_console_across_a_reboot(fake, guests, start_vncterm_domain):
    peers.require("vncdotool")
    peers.require("root", installed=os.geteuid() == 0, how="run the tests as root, as CI does")
    first = guests()
    fake.start_domain(first)
    server = start_vncterm_domain(["--user", "nobody"])
    assert peers.wait_until(lambda: fake.store.read(PORT_KEY) == str(server.port))
    status = open(f"/proc/{server.proc.pid}/status").read()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
    first.hang_up()
    second = guests()
    fake.store.write(TTY_KEY, second.path)
    assert not server.shows(second, REBOOTED, "as-nobody")
    server.stop()
    assert fake.store.read(PORT_KEY) is None
    assert not server.pidfile.exists()


# --- Who may connect to the reverse port ----------------------------------------------------


def test_guest_addresses_come_from_dom0s_backend_keys(fake):
    backend = f"/local/domain/0/backend/vif/{DOMAIN}"
    fake.store.write(f"{backend}/0/ip", "192.0.2.7 2001:db8::7")
    fake.store.write(f"{backend}/1/ip", "not-an-address 198.51.100.9")
    fake.store.write(f"{DOMAIN_PATH}/attr/vif/0/ipv4/0", "203.0.113.66")
    domain = xen.Domain(DOMAIN, fake.xenstore)
    assert domain.guest_addresses() == ["192.0.2.7", "2001:db8::7", "198.51.100.9"]


def test_the_reverse_port_lets_in_the_guests_own_addresses(fake):
    fake.store.write(f"/local/domain/0/backend/vif/{DOMAIN}/0/ip", "192.0.2.7")
    source = xen.DomainSource(xen.Domain(DOMAIN, fake.xenstore))
    allowed = service.guest_or(lambda host: host == "127.0.0.1", source)
    assert allowed("127.0.0.1") and allowed("192.0.2.7")
    assert not allowed("192.0.2.8")
    fake.store.write(f"/local/domain/0/backend/vif/{DOMAIN}/0/ip", "192.0.2.8")
    assert allowed("192.0.2.8") and not allowed("192.0.2.7")
