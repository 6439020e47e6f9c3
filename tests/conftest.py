"""Fixtures for the end-to-end tests, and the session's note about missing peers.

The fixtures are thin: the work is in peers.py, so that a test can be read as a story ("start a
console, start a viewer, look at the screen") and the machinery lives in one place. Each fixture
owns what it starts and stops it at teardown, so a failing test leaves no viewer, X server or
vncterm behind; only its logs and screenshots stay, in tests/artifacts/<test name>/.

Stopping vncterm at teardown is itself a check: `VncTerm.stop()` asserts a clean exit on SIGTERM,
with viewers possibly still connected, so a server that hangs or crashes on shutdown shows up as
an error in whichever test started it.

A peer that is missing skips its tests on a developer's machine (and fails them under CI=true, see
peers.require). The terminal summary then names the missing peers and the one command that
installs them, so a skipped run is never mistaken for a passing one.

The session's TLS certificates (`certificates`) are made here once, with the openssl command,
for every test of VeNCrypt, in-process or with a real viewer.  The other shared fixtures hand
out what the helper modules make and clean up after it: `harness` (harness.py's server, leak
checked), `guest` (guestdesktop.py's Xvnc), `vncdo_viewers` (peers.VncdoViewer), `fake`, `guests`
and `run_console` (fakexen.py's store, guest consoles and console readers), and `initrd`,
`tablet_initrd` and `boot` (qemuguest.py's initramfs and QEMU guests).
"""

import re
import shutil
import subprocess

import pytest

import console
import guestdesktop
import peers
import qemuguest
from chromium import Chromium, require_browser
from fakexen import FakeXen, Guest
from harness import Harness, leak_checked


@pytest.fixture
def artifacts(request):
    """A fresh folder for this test's logs and screenshots: tests/artifacts/<test name>/."""
    folder = peers.ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def start_vncterm(artifacts):
    """start_vncterm(command, port=0, options=()) -> VncTerm; teardown stops each cleanly."""
    servers = []

    def start(command, port=0, options=()):
        server = peers.VncTerm(command, artifacts / f"vncterm{len(servers)}.log", port, options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def harness():
    """harness(**server options) -> a harness.Harness; closed and leak-checked at teardown."""
    yield from leak_checked(Harness)


@pytest.fixture
def guest(artifacts):
    """Xvnc 1024x768 with no TCP listener and no authentication, for the test to paint."""
    guestdesktop.guest_peers()
    server = guestdesktop.Xvnc(artifacts, options=("-rfbport", "-1", "-SecurityTypes", "None"))
    yield server
    server.stop()


@pytest.fixture
def xvfb(artifacts):
    """A virtual X screen (peers.Xvfb) for viewers and screenshots."""
    peers.require("Xvfb")
    peers.require("import")
    screen = peers.Xvfb(artifacts)
    yield screen
    screen.stop()


@pytest.fixture
def vncdo_viewers(artifacts):
    """vncdo_viewers(server, name) -> a connected VncdoViewer; all are stopped at teardown."""
    started = []

    def connect(server, name="vncdo-viewer"):
        viewer = peers.VncdoViewer(server, artifacts, name)
        started.append(viewer)
        return viewer

    yield connect
    for viewer in started:
        viewer.stop()


@pytest.fixture
def fake(tmp_path):
    return FakeXen(tmp_path)


@pytest.fixture
def guests():
    """guests() -> a new Guest; all are hung up at teardown."""
    made = []

    def make():
        made.append(Guest())
        return made[-1]

    yield make
    for guest in made:
        guest.hang_up()


@pytest.fixture
def run_console():
    """run_console(source) -> a started console.Console; stopped (and source closed) at teardown."""
    started = []

    def run(source):
        term = console.Console(source, 80, 25)
        term.start()
        started.append(term)
        return term

    yield run
    for term in started:
        term.stop()
        term.source.close()


def require_initramfs_tools():
    for program in ("qemu-system-x86_64", "busybox", "cpio"):
        peers.require(program)


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    """A gzipped cpio initramfs holding busybox and INIT."""
    require_initramfs_tools()
    return qemuguest.build_initramfs(tmp_path_factory.mktemp("initramfs"), qemuguest.INIT)


@pytest.fixture(scope="module")
def tablet_initrd(tmp_path_factory):
    """The initramfs for a guest with QEMU's virtio tablet (qemuguest.TABLET): busybox, the
    booted kernel's virtio-input and evdev modules, and an INIT that loads them."""
    require_initramfs_tools()
    peers.require("modinfo")
    version = qemuguest.kernel_version(qemuguest.require_kernel())
    modules = qemuguest.module_order(version, qemuguest.TABLET_MODULES)
    return qemuguest.build_initramfs(tmp_path_factory.mktemp("initramfs"),
                                     qemuguest.tablet_init(modules), modules)


@pytest.fixture
def boot(initrd, artifacts):
    """boot(extra=(), initramfs=initrd) -> a paused QemuGuest; every guest is killed at
    teardown."""
    kernel = qemuguest.require_kernel()
    guests = []

    def start(extra=(), initramfs=initrd):
        guests.append(qemuguest.QemuGuest(kernel, initramfs,
                                          artifacts / f"qemu{len(guests)}.log", extra))
        return guests[-1]

    yield start
    for guest in guests:
        guest.stop()


def openssl(*argv, cwd):
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True)


def make_ca(folder, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=vncterm test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return folder / f"{name}.pem"


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    """{"ca", "cert", "key", "other_ca"}: paths to PEM files made with openssl for this run."""
    peers.require("openssl")
    folder = tmp_path_factory.mktemp("certificates")
    ca = make_ca(folder, "ca")
    other_ca = make_ca(folder, "other")
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=folder)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
            cwd=folder)
    return {"ca": ca, "cert": folder / "server.pem", "key": folder / "server.key",
            "other_ca": other_ca}


def pytest_terminal_summary(terminalreporter):
    """Name the peers that were missing, the tests skipped for them, and how to install them."""
    if peers.missing_peers:
        terminalreporter.write_line(
            f"skipped peer tests (missing {', '.join(sorted(peers.missing_peers))}): "
            f"{' '.join(sorted(peers.skipped_tests))}; get the peers with: "
            f"{'; '.join(sorted(set(peers.missing_peers.values())))}")


@pytest.fixture
def browser(artifacts, tmp_path):
    """Headless Chromium with one page (chromium.Chromium), closed at teardown."""
    require_browser()
    chromium = Chromium(artifacts, tmp_path / "chromium-profile")
    yield chromium
    chromium.close()
