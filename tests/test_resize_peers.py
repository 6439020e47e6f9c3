"""Remote resize with real peers: a viewer's window decides the console's size, and the desktop's.

The console test runs TigerVNC's vncviewer under Xvfb with its default RemoteResize on a
command that writes its `stty size` whenever SIGWINCH comes; xdotool resizes the viewer's
window, and the command must read the cells that fit in it.  The desktop test reverse-connects
TigerVNC's Xvnc as the guest and sends a SetDesktopSize from our own client on the desktop:
the guest's X screen, as its own `xdpyinfo` reports it, must take the size, and the client
must get the guest's answer and the new framebuffer.  noVNC in headless Chromium, with its
"Remote resizing" setting, must make the command's terminal the cells that fit its screen
element, at first and after the page is made smaller.  gtk-vnc's gvncviewer and virt-viewer's
remote-viewer resize the remote side with their window too, and are held to the same.
"""

import re
import struct

import pytest

import peers
from chromium import BROWSER_URL, FIRST_PICTURE, Chromium, printed, require_browser
from guestdesktop import Xvnc, start_proxy
from peers import WATCH_SIZE
from rawviewer import (
    DESKTOP_SIZE,
    EXTENDED_DESKTOP_SIZE,
    RAW,
    Client,
    resize_reply,
    set_desktop_size,
)


def watched_console(start_vncterm, folder, options=()):
    """vncterm on a command that writes its `stty size` to a file at start and on SIGWINCH:
    (the server, that file, the cell size in pixels)."""
    size_file = folder / "size"
    script = folder / "watch.sh"
    script.write_text(WATCH_SIZE.format(file=size_file))
    server = start_vncterm(f"sh {script}", options=options)
    client = Client(server.port)
    client.close()
    return server, size_file, (client.width // peers.COLUMNS, client.height // peers.ROWS)


def test_resizing_tigervncs_window_resizes_the_commands_terminal(start_vncterm, xvfb, tmp_path):
    peers.require("vncviewer")
    peers.require("xdotool")
    server, size_file, (cell_width, cell_height) = watched_console(start_vncterm, tmp_path)
    assert peers.wait_until(lambda: peers.read_text(size_file) == "25 80\n")
    xvfb.start(["vncviewer", server.address], "vncviewer")
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class", "TigerVNC")
    window = window.split()[0]
    width, height = 100 * cell_width + 5, 30 * cell_height + 7
    xvfb.run("xdotool", "windowsize", "--sync", window, str(width), str(height))
    assert peers.wait_until(lambda: peers.read_text(size_file) == "30 100\n"), (
        peers.read_text(size_file))


def test_set_desktop_size_on_the_desktop_resizes_the_guests_screen(start_vncterm, artifacts,
                                                                    tmp_path):
    for peer in ("Xvnc", "vncconfig", "xdpyinfo"):
        peers.require(peer)
    proxy = start_proxy(start_vncterm, tmp_path)
    guest = Xvnc(artifacts, options=("-rfbport", "-1", "-SecurityTypes", "None"))
    try:
        guest.connect(proxy)
        client = Client(proxy.port)
        client.set_encodings(RAW, EXTENDED_DESKTOP_SIZE, DESKTOP_SIZE)
        client.request(incremental=False)
        client.read_update()
        assert (client.width, client.height) == (1024, 768)
        set_desktop_size(client, 800, 600)
        assert resize_reply(client) == (1, 0, 800, 600)
        dimensions = re.search(r"dimensions:\s+(\d+x\d+)", guest.run("xdpyinfo"))
        assert dimensions and dimensions[1] == "800x600"
        client.send(struct.pack(">BxHHBx", 251, 0, 0, 1) + struct.pack(">IHHHHI", 0, 0, 0, 0, 0, 0))
        reason, status, width, height = resize_reply(client)
        assert (reason, width, height) == (1, 800, 600) and status != 0
        client.close()
    finally:
        guest.stop()


def test_novnc_remote_resizing_resizes_the_commands_terminal(start_vncterm, artifacts,
                                                             tmp_path):
    """noVNC in Chromium with its "Remote resizing" setting (resize=remote in the URL): the
    console becomes the cells that fit noVNC's screen element, and follows the page's size."""
    require_browser()
    server, size_file, (cell_width, cell_height) = watched_console(start_vncterm, tmp_path,
                                                                   ("--web", "0"))
    browser = Chromium(artifacts, tmp_path / "chromium-profile")
    try:
        browser.open(printed(server, BROWSER_URL) + "&resize=remote")
        screen = ("((e) => [e.clientWidth, e.clientHeight])"
                  "(document.getElementById('noVNC_container'))")

        def fits():
            width, height = browser.evaluate(screen)
            wanted = f"{height // cell_height} {width // cell_width}\n"
            return peers.read_text(size_file) == wanted

        assert peers.wait_until(fits, timeout=FIRST_PICTURE), (
            browser.evaluate(screen), peers.read_text(size_file))
        browser.call("Emulation.setDeviceMetricsOverride", width=700, height=500,
                     deviceScaleFactor=1, mobile=False)
        assert peers.wait_until(lambda: browser.evaluate(screen)[0] <= 700)
        assert peers.wait_until(fits), (browser.evaluate(screen), peers.read_text(size_file))
    finally:
        browser.close()


@pytest.mark.parametrize(("viewer", "window_class"), [("gvncviewer", "gvncviewer"),
                                                      ("remote-viewer", "remote-viewer")])
def test_gtk_vnc_viewers_resize_the_commands_terminal(start_vncterm, xvfb, tmp_path, viewer,
                                                      window_class):
    """gtk-vnc's gvncviewer and virt-viewer's remote-viewer resize the remote side with their
    window by default.  Their menus and borders take some of the window, so the check is that
    the terminal became wider and shorter, by no more than the window holds."""
    peers.require(viewer)
    peers.require("xdotool")
    server, size_file, (cell_width, cell_height) = watched_console(start_vncterm, tmp_path)
    assert peers.wait_until(lambda: peers.read_text(size_file) == "25 80\n")
    address = (f"vnc://127.0.0.1:{server.port}" if viewer == "remote-viewer"
               else f"127.0.0.1:{server.port - 5900}")
    xvfb.start([viewer, address], viewer)
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class", window_class)
    width, height = 1000, 300

    def fits():
        xvfb.run("xdotool", "windowsize", "--sync", window.split()[0], str(width), str(height))
        lines, columns = map(int, peers.read_text(size_file).split())
        return (80 < columns <= width // cell_width) and (5 <= lines < height // cell_height)

    assert peers.wait_until(fits), peers.read_text(size_file)
