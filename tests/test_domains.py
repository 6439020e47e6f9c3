"""`vncterm.py --domain all`: every guest domain of a (fake) host from one process.

The host is tests/fakexenstore.py's store with one pty per guest, as xenconsoled would make them.
Each guest paints its own pattern: a green block whose column is the domain id, between a red
and a blue block that all guests share.  A capture of domain N's port that shows N's green block
and black where every other guest's would be is N's console and no other's.  The stories: a
host of 30 guests and a dom0 comes up; a guest is destroyed and another created while the rest
run on; hostile names and keys are ignored for the domain they belong to; the same with the
root helper (--user), and with a password and TLS.  The browser side is checked in headless
Chromium (the page shows a thumbnail per domain, follows domains as they come and go, and each
entry opens its domain in noVNC), and the README's fleet recipe runs as written: jq makes
Debian websockify's token file from /domains.json, and each token reaches its own domain.  The
units at the top check the pieces that parse xenstore's answers and the helper's requests, the
fake's domain events, and that an idle viewer server sleeps without a timeout.
"""

import io
import json
import os
import random
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from PIL import Image

import console
import display
import fakexenstore
import peers
import rawviewer
import render
import roothelper
import sources
import vncterm
import xen
import xenhost
from fakexen import Guest
from peers import Block

HOST_DOMAINS = 30
MARKERS = (Block("red", 2, 1), Block("blue", 2, 22))


# --- Units ----------------------------------------------------------------------------------


def test_domain_ids_skip_dom0_and_log_bad_names_once(caplog):
    warned = set()
    names = ["0", "1", "7", "abc", "٣", "32752", "12\n", "-3"]
    assert xenhost.domain_ids(names, warned) == {1, 7}
    assert xenhost.domain_ids(names, warned) == {1, 7}
    bad = [record.getMessage() for record in caplog.records]
    assert len(bad) == 5, bad
    assert all("not a domain id" in message for message in bad)


def test_names_with_control_characters_are_not_shown(tmp_path, caplog):
    store = fakexenstore.Store(tmp_path / "xenstore.json")
    domain = xen.Domain(3, xen.Xenstore(fakexenstore.install(tmp_path / "bin", store.path)))
    store.write("/local/domain/3/name", "web-3")
    assert domain.name() == "web-3"
    store.write("/local/domain/3/name", "evil\x1b]0;owned\x07")
    assert domain.name() is None
    assert "ignoring its name" in caplog.text


@pytest.mark.parametrize("request_", [
    ["exists"], ["exists", 0], ["exists", "3"], ["exists", True], ["exists", 3, 4],
    ["open_console", "/dev/sda"], ["read", 3], ["watch", 3], ["publish", 3],
    ["publish", 3, {"console/vnc-port": 5903}], ["list_domains", 3], "not json", ["x" * 99]])
def test_the_host_helper_takes_only_fixed_requests_with_a_domain_id(request_):
    raw = request_.encode() if isinstance(request_, str) else __import__("json").dumps(
        request_).encode()
    with pytest.raises(OSError, match="refuses") as refusal:
        roothelper.parse_host_request(raw)
    assert refusal.value.errno == 1


@pytest.mark.parametrize("options, complaint", [
    (["--port", "0"], "bases"), (["--log", "/tmp/console.log"], "one console"),
    (["--desktop-connect", "127.0.0.1:5999"], "one desktop"), (["--domain", "x"], "not a number"),
    (["--domain", "32752"], "not a domain id")])
def test_options_that_cannot_apply_to_every_domain_are_refused(options, complaint, tmp_path,
                                                                capsys):
    prefix = fakexenstore.install(tmp_path / "bin", tmp_path / "xenstore.json")
    with pytest.raises(SystemExit):
        vncterm.parse_args(["--domain", "all", "--xenstore-prefix", prefix, *options])
    assert complaint in capsys.readouterr().err


def test_the_host_helper_accepts_its_requests():
    assert roothelper.parse_host_request(b'["list_domains"]') == ("list_domains", [])
    assert roothelper.parse_host_request(b'["open_console", 7]') == ("open_console", [7])
    assert roothelper.parse_host_request(b'["publish", 7, {"console/vnc-port": "5907"}]') == (
        "publish", [7, {"console/vnc-port": "5907"}])


def test_events_poke_only_the_domain_whose_console_changed():
    fired = []
    events = xenhost.Events([], lambda: fired.append(True))
    try:
        seven, eight = events.subscribe(7), events.subscribe(8)
        assert os.read(seven, 10) == b"\n" and os.read(eight, 10) == b"\n", "fires once at once"
        os.set_blocking(eight, False)
        for path in ("/local/domain/7/console/tty", "/local/domain/7", "/local/domain/8/name",
                     "/local/domain/7/serial/0/tty", "/local/domain/8/device/vif/0",
                     "/local/domain/78", "@releaseDomain", "/local/domain/8/consoles"):
            events.dispatch(path)
        assert os.read(seven, 10) == b"\n\n\n"
        with pytest.raises(BlockingIOError):
            os.read(eight, 10)
        assert fired == [True]
        events.unsubscribe(7)
        assert os.read(seven, 10) == b"", "unsubscribing ends the domain's pokes"
    finally:
        events.stop()


def test_the_fake_lists_domains_and_fires_introduce_and_release(tmp_path):
    store = fakexenstore.Store(tmp_path / "xenstore.json")
    xenstore = xen.Xenstore(fakexenstore.install(tmp_path / "bin", store.path))
    assert xenstore.list("/local/domain") == []
    store.write("/local/domain/0/name", "Domain-0")
    watches = {event: xenstore.watch(event) for event in ("@introduceDomain", "@releaseDomain")}
    try:
        for event, watch in watches.items():
            assert watch.stdout.readline() == f"{event}\n".encode(), "a new watch fires once"
        store.write("/local/domain/12/name", "twelve")
        assert watches["@introduceDomain"].stdout.readline() == b"@introduceDomain\n"
        assert sorted(xenstore.list("/local/domain")) == ["0", "12"]
        store.rm("/local/domain/12")
        assert watches["@releaseDomain"].stdout.readline() == b"@releaseDomain\n"
        assert xenstore.list("/local/domain") == ["0"]
    finally:
        for watch in watches.values():
            watch.kill()
            watch.wait()
            watch.stdout.close()


def test_an_idle_server_sleeps_until_a_viewer_comes_or_it_is_stopped(monkeypatch):
    """A hundred idle domains must not wake a hundred loops twice a second."""
    timeouts = []
    select = socketserver._ServerSelector.select

    def recording(selector, timeout=None):
        timeouts.append(timeout)
        return select(selector, timeout)

    monkeypatch.setattr(socketserver._ServerSelector, "select", recording)
    term = console.Console(sources.CommandSource("true", 80, 25), 80, 25)
    picture = display.ConsoleDisplay(term, render.Glyphs(render.load_font(None)[0]))
    server = vncterm.Server(vncterm.listen("127.0.0.1", 0), picture, "idle")
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    try:
        assert peers.wait_until(lambda: timeouts, 10)
        rawviewer.Client(server.server_address[1]).close()
        assert peers.wait_until(lambda: len(timeouts) >= 2, 10)
        assert set(timeouts) == {None}, "the loop sleeps with no timeout"
    finally:
        server.shutdown()
        loop.join(10)
        server.server_close()
    assert not loop.is_alive(), "shutdown() wakes the sleeping loop"


# --- The fake host and vncterm --domain all -------------------------------------------------


class FakeHost:
    """A fake xenstore with dom0, and guests that xenconsoled gave a pty each."""

    def __init__(self, folder):
        self.store = fakexenstore.Store(folder / "xenstore.json")
        self.prefix = fakexenstore.install(folder / "bin", self.store.path)
        self.guests = {}
        self.store.write("/local/domain/0/name", "Domain-0")
        self.store.write("/local/domain/0/console/tty", Guest().path)

    def create(self, number, name=None):
        guest = self.guests[number] = Guest()
        self.store.write(f"/local/domain/{number}/name", name or f"guest-{number}")
        self.store.write(f"/local/domain/{number}/console/tty", guest.path)
        return guest

    def destroy(self, number):
        self.store.rm(f"/local/domain/{number}")
        self.guests.pop(number).hang_up()

    def keys(self, number):
        return {path.rsplit("/", 1)[1]: value
                for path, (value, _) in self.store.snapshot(
                    f"/local/domain/{number}/console").items()}

    def close(self):
        for guest in self.guests.values():
            guest.hang_up()


def pattern(number):
    return (*MARKERS, Block("green", 8 + 2 * number, 5 + number % 15, width=2, height=1))


def paint(blocks):
    out = "\033[2J"
    for block in blocks:
        colour = peers.SGR_BACKGROUND[block.colour]
        for row in range(block.row, block.row + block.height):
            out += f"\033[{row + 1};{block.col + 1}H\033[{colour}m{' ' * block.width}\033[0m"
    return (out + "\033[12;1H").encode()  # the cursor parked away from every block


def free_base(count):
    """A port base with base+1 .. base+count free for viewers and for guests' desktops, tried
    in a random order so that two test runs on one machine rarely race for the same range."""
    for base in random.sample(range(10000, 30000, 997), 21):  # below the ephemeral ports
        try:
            for port in range(base + 1, base + count + 1):
                socket.create_server(("127.0.0.1", port)).close()
                socket.create_server(("127.0.0.1", port + 1000)).close()
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


class HostVncTerm:
    """`vncterm.py --domain all` on the fake host; .served maps domain id to its port."""

    def __init__(self, host, folder, options=()):
        self.folder = folder
        self.base = free_base(HOST_DOMAINS + 5)
        self.served = {}
        self.output = []
        self.pidfile = folder / "vncterm.pid"
        argv = [sys.executable, "vncterm.py", "--domain", "all", "--port", str(self.base),
                "--reverse-port", str(self.base + 1000), "--xenstore-prefix", host.prefix,
                "--pidfile", str(self.pidfile), "--log-file", str(folder / "events.log"),
                *options]
        with open(folder / "vncterm.stderr", "wb") as stderr:
            self.proc = subprocess.Popen(argv, cwd=peers.REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            words = line.split()
            if words[:2] == ["vncterm:", "domain"] and words[3] == "on":
                self.served[int(words[2])] = int(words[4].rsplit(":", 1)[1])

    def children(self):
        """The commands of vncterm's child processes."""
        result = subprocess.run(["ps", "--ppid", str(self.proc.pid), "-ww", "-o", "args="],
                                capture_output=True, text=True)
        return sorted(result.stdout.splitlines())

    def report(self):
        stderr = peers.read_text(self.folder / "vncterm.stderr")[-3000:]
        events = peers.read_text(self.folder / "events.log")[-3000:]
        return (f"exit status {self.proc.poll()}\nstdout:\n" + "\n".join(self.output[-40:])
                + f"\nstderr:\n{stderr}\nlog:\n{events}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30) == 0, f"vncterm did not exit cleanly\n{self.report()}"
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def host(tmp_path):
    fake = FakeHost(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def start_host(host, artifacts):
    started = []

    def start(options=()):
        started.append(HostVncTerm(host, artifacts, options))
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def capture_errors(port, guest, blocks):
    """Errors between domain port's framebuffer and blocks (the guest paints them first)."""
    guest.say(paint(blocks))
    try:
        viewer = rawviewer.Client(port)
    except OSError as error:
        return [f"port {port}: {error}"]
    try:
        viewer.set_encodings(rawviewer.RAW)
        viewer.request(incremental=False)
        viewer.read_update()
        return peers.framebuffer_errors(viewer.image, blocks)
    except (OSError, AssertionError) as error:
        return [f"port {port}: {error}"]
    finally:
        viewer.close()


def shows_own_console(server, host, number):
    errors = peers.until_no_errors(
        lambda: capture_errors(server.served[number], host.guests[number], pattern(number)))
    assert not errors, f"domain {number}: {errors[:5]}\n{server.report()}"


def told_and_closed(viewer):
    """True if the viewer's bottom row turned to a status line, then the server hung up."""
    status_shown = False
    try:
        while True:
            viewer.request()
            viewer.read_update()
            bottom = viewer.image.crop((0, viewer.height - 16, viewer.width, viewer.height))
            status_shown = status_shown or bottom.getbbox() is not None
    except (ConnectionError, OSError):
        return status_shown
    finally:
        viewer.close()


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_every_domain_on_its_own_port_and_domains_come_and_go(host, start_host):
    for number in range(1, HOST_DOMAINS + 1):
        host.create(number)
    server = start_host()
    assert peers.wait_until(lambda: len(server.served) == HOST_DOMAINS, 60), server.report()
    assert set(server.served) == set(range(1, HOST_DOMAINS + 1)), "dom0 is never served"
    assert all(server.served[n] == server.base + n for n in server.served)
    assert refused(server.base), "nothing listens on dom0's port"
    for number in range(1, HOST_DOMAINS + 1):
        shows_own_console(server, host, number)
        assert host.keys(number)["vnc-port"] == str(server.base + number)
    assert "vnc-port" not in host.keys(0)
    children = server.children()
    assert len(children) == 3 and all("watch" in child for child in children), children

    watching = rawviewer.Client(server.served[7], timeout=20)
    watching.set_encodings(rawviewer.RAW)
    watching.request(incremental=False)
    watching.read_update()
    host.destroy(7)
    assert told_and_closed(watching), "domain 7's viewer sees the status line, then the end"
    assert peers.wait_until(lambda: refused(server.base + 7), 15), server.report()
    assert peers.wait_until(lambda: host.store.read("/local/domain/7") is None)
    assert host.store.snapshot("/local/domain/7") == {}, "the keys go with the domain"

    created = time.monotonic()
    host.create(HOST_DOMAINS + 1)
    assert peers.wait_until(lambda: HOST_DOMAINS + 1 in server.served, 20), server.report()
    print(f"domain {HOST_DOMAINS + 1} served {time.monotonic() - created:.2f} s after creation")
    shows_own_console(server, host, HOST_DOMAINS + 1)
    for number in (1, 6, 8, HOST_DOMAINS):
        shows_own_console(server, host, number)
    assert server.children() == children, "no process per domain"
    server.stop()
    assert not server.pidfile.exists()
    for number in host.guests:
        assert "vnc-port" not in host.keys(number), f"domain {number}'s keys stay after exit"


def test_bad_input_is_ignored_for_its_domain_only(host, start_host, tmp_path):
    host.create(1)
    host.store.write("/local/domain/abc/name", "not a domain")
    host.store.write("/local/domain/2/name", "hostile")
    host.store.write("/local/domain/2/console/tty", "/etc/passwd")
    host.create(3, name="bell\x07and\x1b[2Jclear")
    server = start_host()
    assert peers.wait_until(lambda: {1, 2, 3} <= set(server.served), 30), server.report()
    shows_own_console(server, host, 1)
    shows_own_console(server, host, 3)
    assert "vnc-port" not in host.keys(2), "a refused console publishes nothing"
    assert peers.wait_until(
        lambda: "not a domain id" in peers.read_text(server.folder / "events.log"))
    server.stop()


def test_as_nobody_every_domain_through_one_helper(host, start_host):
    peers.require("root", installed=os.geteuid() == 0, how="run the tests as root, as CI does")
    for number in (1, 2, 3):
        host.create(number)
    server = start_host(["--user", "nobody"])
    assert peers.wait_until(lambda: len(server.served) == 3, 30), server.report()
    for number in (1, 2, 3):
        shows_own_console(server, host, number)
    host.destroy(2)
    assert peers.wait_until(lambda: refused(server.base + 2), 15), server.report()
    host.create(4)
    assert peers.wait_until(lambda: 4 in server.served, 20), server.report()
    shows_own_console(server, host, 4)
    server.proc.kill()
    server.proc.wait()
    assert peers.wait_until(lambda: all("vnc-port" not in host.keys(n) for n in (1, 3, 4))), \
        "the helper retracts every domain's keys, even after a SIGKILL"


# --- The host's browser page -----------------------------------------------------------------

def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def thumbnail_errors(page, entry, guest):
    guest.say(paint(pattern(entry["id"])))
    picture = Image.open(io.BytesIO(fetch(page + entry["thumbnail"])))
    return peers.framebuffer_errors(picture.convert("RGB"), pattern(entry["id"]))


def page_entries(browser):
    """The domain ids of the page's entries whose thumbnail has loaded."""
    return browser.evaluate(
        "[...document.querySelectorAll('#domains a')].filter(a => { const i = a.querySelector"
        "('img'); return i.complete && i.naturalWidth > 0; }).map(a => +a.dataset.domain)")


def test_the_host_page_lists_every_domain_and_opens_each_in_novnc(host, start_host, browser,
                                                                   tmp_path, artifacts):
    for number in (1, 2, 3, 4):
        host.create(number)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        web_port = probe.getsockname()[1]
    server = start_host(["--web", str(web_port)])
    assert peers.wait_until(lambda: len(server.served) == 4, 30), server.report()
    page = f"http://127.0.0.1:{web_port}/"

    entries = json.loads(fetch(page + "domains.json"))
    assert [(e["id"], e["name"], e["port"]) for e in entries] == [
        (n, f"guest-{n}", server.base + n) for n in (1, 2, 3, 4)]
    for entry in entries:
        errors = peers.until_no_errors(
            lambda entry=entry: thumbnail_errors(page, entry, host.guests[entry["id"]]))
        assert not errors, f"thumbnail of domain {entry['id']}: {errors[:5]}"

    browser.open(page)
    assert peers.wait_until(lambda: page_entries(browser) == [1, 2, 3, 4], 30)
    browser.screenshot(artifacts / "page.png")
    host.create(5)
    host.destroy(2)
    assert peers.wait_until(lambda: page_entries(browser) == [1, 3, 4, 5], 30), \
        "the page follows domains as they come and go"

    link = browser.evaluate("document.querySelector('#domains a[data-domain=\"3\"]').href")
    browser.open(link)
    errors = peers.until_no_errors(lambda: host.guests[3].say(paint(pattern(3))) or
                                   peers.screenshot_errors(browser.screenshot(
                                       artifacts / "domain-3.png"), pattern(3)), timeout=40)
    assert not errors, f"noVNC on domain 3: {errors[:5]}\n{server.report()}"
    server.stop()





def test_passwords_and_tls_cover_every_domain(host, start_host, tmp_path, artifacts):
    peers.require("vncdotool")
    cert, key = peers.self_signed_certificate(tmp_path)
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    for number in (1, 2):
        host.create(number)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        web_port = probe.getsockname()[1]
    server = start_host(["--password-file", str(password), "--web", str(web_port),
                         "--web-cert", str(cert), "--web-key", str(key)])
    assert peers.wait_until(lambda: len(server.served) == 2, 30), server.report()
    for number in (1, 2):
        with pytest.raises(AssertionError, match=r"\[2\]"):
            rawviewer.Client(server.served[number])  # offered VNC authentication only

        def look(number=number):
            host.guests[number].say(paint(pattern(number)))
            capture = artifacts / f"domain-{number}.png"
            peers.run([sys.executable, "-m", "vncdotool.command", "-p", "s3cret", "-s",
                       f"127.0.0.1::{server.served[number]}", "capture", str(capture),
                       "capture", str(capture)])
            return peers.framebuffer_errors(peers.load_rgb(capture), pattern(number))
        errors = peers.until_no_errors(look)
        assert not errors, f"domain {number} with its password: {errors[:5]}"
    unverified = ssl._create_unverified_context()
    with urllib.request.urlopen(f"https://127.0.0.1:{web_port}/domains.json", timeout=10,
                                context=unverified) as reply:
        assert [entry["id"] for entry in json.loads(reply.read())] == [1, 2]
    server.stop()


def rfb_desktop_name(relay):
    """The RFB handshake (RFC 6143 §7.1-7.3, security None) over a WebSocket: the name."""
    received = bytearray()

    def take(size):
        while len(received) < size:
            received.extend(relay.recv())
        taken = bytes(received[:size])
        del received[:size]
        return taken

    assert take(12) == b"RFB 003.008\n"
    relay.send_binary(b"RFB 003.008\n")
    assert 1 in take(take(1)[0])
    relay.send_binary(b"\x01")
    assert take(4) == b"\0\0\0\0"
    relay.send_binary(b"\x01")
    take(20)
    return take(int.from_bytes(take(4), "big")).decode()


def test_a_fleet_gateway_routes_by_tokens_made_from_domains_json(host, start_host, tmp_path):
    """README's fleet recipe, run as written: jq turns /domains.json into a TokenFile, and
    Debian's websockify on a "gateway" port relays each token to its domain's RFB server."""
    for tool in ("websockify", "jq", "curl"):
        peers.require(tool)
    import websocket
    for number in (1, 2):
        host.create(number)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        web_port = probe.getsockname()[1]
    server = start_host(["--web", str(web_port)])
    assert peers.wait_until(lambda: len(server.served) == 2, 30), server.report()
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    subprocess.run(f"curl -s http://127.0.0.1:{web_port}/domains.json | jq -r '.[] | "
                   f"\"host1-\\(.id): 127.0.0.1:\\(.port)\"' > {tokens}/host1",
                   shell=True, check=True, timeout=30)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        gateway_port = probe.getsockname()[1]
    gateway = subprocess.Popen(["websockify", "--token-plugin", "TokenFile", "--token-source",
                                str(tokens), str(gateway_port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for number in (1, 2):
            def desktop_name(number=number):
                try:
                    relay = websocket.create_connection(
                        f"ws://127.0.0.1:{gateway_port}/websockify?token=host1-{number}",
                        subprotocols=["binary"], timeout=10)
                except OSError:
                    return None
                try:
                    return rfb_desktop_name(relay)
                finally:
                    relay.close()
            assert peers.wait_until(desktop_name, 20) == f"domain {number}"
    finally:
        peers.stop_process(gateway, group=True)
    server.stop()
