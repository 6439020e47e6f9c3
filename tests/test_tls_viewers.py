"""Real viewers against vncterm's authentication: TigerVNC over VeNCrypt, vncdotool with passwords.

TigerVNC's vncviewer (GnuTLS) is the VeNCrypt client most people have.  It gets the test CA
with -X509CA and connects with SecurityTypes=X509None, or X509Vnc with a password file made by
`vncpasswd -f`; it must then show the painted blocks and type into the console like any viewer.
Given a CA that did not sign our certificate, it must stop at its "Unknown certificate issuer"
question, and when told no, vncterm must never count it as connected.  vncdotool speaks plain
VNC authentication (type 2): with the full password its keys arrive, with the view-only
password it still captures the screen but its keys go nowhere.

gtk-vnc's gvncviewer is not here: it reads its CA only from /etc/pki/CA or ~/.pki/CA of the
real user (getpwuid, not $HOME), so a test could not give it one without writing outside its
own folders.  Each viewer runs with HOME in the test's folder, so nothing lands in ~/.vnc.
"""

import re
import subprocess
import sys

import pytest

import peers
from peers import Block

PATTERN = (Block("red", 2, 1), Block("green", 72, 1), Block("blue", 2, 22))
BLANK_CELL = (40, 13)
PASSWORD, VIEW_ONLY_PASSWORD = "tls-pass", "watching"


def serve(start_vncterm, folder, *options):
    """vncterm painting PATTERN, then `cat` into folder/typed.txt, with extra options."""
    script = folder / "console.sh"
    script.write_text(f"{peers.paint_command(PATTERN)}\nexec cat > {folder / 'typed.txt'}\n")
    return start_vncterm(f"sh {script}", options=("--verbose", *options))


def password_file(folder, name, password):
    path = folder / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def tigervnc_password_file(folder, password):
    """The obfuscated form vncviewer's -passwd reads, made by TigerVNC's own vncpasswd."""
    peers.require("vncpasswd")
    path = folder / "passwd.vnc"
    path.write_bytes(subprocess.run(["vncpasswd", "-f"], input=password.encode(),
                                    capture_output=True, check=True).stdout)
    return str(path)


def start_tigervnc(xvfb, server, folder, *options):
    peers.require("vncviewer")
    xvfb.env["HOME"] = str(folder)
    xvfb.start(["vncviewer", "-X509CRL", str(folder / "no-crl.pem"), *options, server.address],
               "vncviewer")


def shows_pattern(xvfb):
    errors = peers.until_no_errors(
        lambda: peers.screenshot_errors(xvfb.screenshot("vncviewer"), PATTERN))
    assert not errors, "\n".join(errors)


def viewers_connected(server):
    return re.findall(r"viewer \S+ connected", peers.read_text(server.log_path))


def test_tigervnc_x509none(start_vncterm, xvfb, artifacts, certificates):
    server = serve(start_vncterm, artifacts, "--tls-cert", str(certificates["cert"]),
                   "--tls-key", str(certificates["key"]), "--tls-only")
    start_tigervnc(xvfb, server, artifacts, "-SecurityTypes", "X509None",
                   "-X509CA", str(certificates["ca"]))
    shows_pattern(xvfb)


def test_tigervnc_x509vnc_with_password_types_into_the_console(start_vncterm, xvfb, artifacts,
                                                              certificates):
    peers.require("xdotool")
    server = serve(start_vncterm, artifacts, "--tls-cert", str(certificates["cert"]),
                   "--tls-key", str(certificates["key"]), "--tls-only",
                   "--password-file", password_file(artifacts, "pw", PASSWORD))
    start_tigervnc(xvfb, server, artifacts, "-SecurityTypes", "X509Vnc",
                   "-X509CA", str(certificates["ca"]),
                   "-passwd", tigervnc_password_file(artifacts, PASSWORD))
    shows_pattern(xvfb)
    window = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--class", "TigerVNC")
    region = peers.find_console(xvfb.screenshot("before-typing"), PATTERN[0])
    x, y = peers.cell_centre(region, *BLANK_CELL)
    xvfb.run("xdotool", "windowfocus", "--sync", window.split()[0])
    xvfb.run("xdotool", "mousemove", "--sync", str(x), str(y), "click", "1")
    xvfb.run("xdotool", "type", "--delay", "20", "over tls")
    xvfb.run("xdotool", "key", "Return")
    typed = artifacts / "typed.txt"
    assert peers.wait_until(lambda: peers.read_text(typed) == "over tls\n"), \
        peers.read_text(typed)


def test_tigervnc_refuses_a_certificate_from_another_ca(start_vncterm, xvfb, artifacts,
                                                       certificates):
    peers.require("xdotool")
    server = serve(start_vncterm, artifacts, "--tls-cert", str(certificates["cert"]),
                   "--tls-key", str(certificates["key"]), "--tls-only")
    start_tigervnc(xvfb, server, artifacts, "-SecurityTypes", "X509None",
                   "-X509CA", str(certificates["other_ca"]))
    question = xvfb.run("xdotool", "search", "--sync", "--onlyvisible", "--name",
                        "Unknown certificate issuer")
    xvfb.run("xdotool", "windowfocus", "--sync", question.split()[0])
    xvfb.run("xdotool", "key", "Escape")
    log = artifacts / "vncviewer.log"
    assert peers.wait_until(lambda: "Unknown certificate issuer" in peers.read_text(log)), \
        peers.read_text(log)
    assert viewers_connected(server) == []


def vncdo_with_password(server, password, *actions):
    peers.require("vncdotool")
    return peers.run([sys.executable, "-m", "vncdotool.command", "-s", server.address,
                      "-p", password, *actions])


def capture_with_password(server, password, path):
    """vncdotool's capture, taken twice as in peers.vncdo_capture; the image."""
    vncdo_with_password(server, password, "capture", str(path), "capture", str(path))
    return peers.load_rgb(path)


@pytest.mark.parametrize("password,arrives", [(PASSWORD, True), (VIEW_ONLY_PASSWORD, False)])
def test_vncdotool_full_and_view_only_passwords(start_vncterm, artifacts, password, arrives):
    server = serve(start_vncterm, artifacts,
                   "--password-file", password_file(artifacts, "pw", PASSWORD),
                   "--viewonly-password-file", password_file(artifacts, "vo", VIEW_ONLY_PASSWORD))
    errors = peers.until_no_errors(lambda: peers.framebuffer_errors(
        capture_with_password(server, password, artifacts / "vncdotool.png"), PATTERN))
    assert not errors, "\n".join(errors)
    vncdo_with_password(server, password, "type", "typed", "key", "enter")
    vncdo_with_password(server, PASSWORD, "type", "done", "key", "enter")
    expected = "typed\ndone\n" if arrives else "done\n"
    typed = artifacts / "typed.txt"
    assert peers.wait_until(lambda: peers.read_text(typed) == expected), peers.read_text(typed)


def test_vncdotool_with_a_wrong_password_is_refused(start_vncterm, artifacts):
    server = serve(start_vncterm, artifacts,
                   "--password-file", password_file(artifacts, "pw", PASSWORD))
    with pytest.raises(AssertionError):
        vncdo_with_password(server, "wrong", "type", "x")
    assert "VNC authentication failed" in peers.read_text(server.log_path)
    assert viewers_connected(server) == []
