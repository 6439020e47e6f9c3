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
"""

import re
import shutil

import pytest

import peers


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
def xvfb(artifacts):
    """A virtual X screen (peers.Xvfb) for viewers and screenshots."""
    peers.require("Xvfb")
    peers.require("import")
    screen = peers.Xvfb(artifacts)
    yield screen
    screen.stop()


def pytest_terminal_summary(terminalreporter):
    """Name the peers that were missing, the tests skipped for them, and how to install them."""
    if peers.missing_peers:
        terminalreporter.write_line(
            f"skipped peer tests (missing {', '.join(sorted(peers.missing_peers))}): "
            f"{' '.join(sorted(peers.skipped_tests))}; get the peers with: "
            f"{'; '.join(sorted(set(peers.missing_peers.values())))}")
