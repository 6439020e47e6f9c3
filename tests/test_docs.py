"""The documentation against the code: options, links, and the files in contrib/.

The README promises every command-line option, docs/ and contrib/ are linked from it, and the
code cites docs/ by name, so each of those is checked here: every option `vncterm.py --help`
lists appears in the README; every relative link and anchor in the README and docs/ points at
something that exists; nothing cites notes outside this repository; the guest-side script
parses, and does what its comment says with stand-ins for the X and xenstore tools; the
systemd units use only options vncterm has.
"""

import configparser
import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

import vncterm

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
OPTION = re.compile(r"--[a-z][a-z-]+")
GUEST_SCRIPT = REPO / "contrib" / "vnc-to-dom0"


def help_text():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        vncterm.parse_args(["--help"])
    return out.getvalue()


def anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page):
    return {anchor(line.lstrip("#")) for line in page.read_text().splitlines()
            if line.startswith("#")}


def test_readme_names_every_option():
    options = set(OPTION.findall(help_text())) - {"--help"}
    readme = (REPO / "README.md").read_text()
    missing = sorted(option for option in options if f"`{option}" not in readme)
    assert not missing, f"options the README does not mention: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_point_inside_the_repository(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(target)
        elif fragment and fragment not in anchors(resolved):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_nothing_cites_notes_outside_the_repository():
    sources = [*REPO.glob("*.py"), *REPO.glob("tests/*.py"), *REPO.glob("bench/*.py"), *PAGES]
    citing = [path.name for path in sources
              if re.search(r"rfb[-]notes|DESIGN\.md|\.\./shared|shared/docs", path.read_text())
              and path.name != "test_docs.py"]
    assert not citing


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 400


def test_guest_script_parses():
    for shell in ("sh", "bash"):
        subprocess.run([shell, "-n", str(GUEST_SCRIPT)], check=True)
    assert os.access(GUEST_SCRIPT, os.X_OK)


def fake_tools(folder, xenstore_answer):
    """Stand-ins for xenstore-read, Xvnc, xdpyinfo, xterm and vncconfig that log their
    arguments to folder/calls; xenstore-read prints `xenstore_answer`, or fails without one."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    calls = folder / "calls"
    read = f"echo '{xenstore_answer}'" if xenstore_answer else "exit 1"
    for name, body in (("xenstore-read", read), ("Xvnc", ""), ("xdpyinfo", ""),
                       ("xterm", ""), ("vncconfig", "")):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n{body}\n')
        tool.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin"), calls


def test_guest_script_connects_xvnc_to_the_published_address(tmp_path):
    env, calls = fake_tools(tmp_path, "192.0.2.1:5507")
    subprocess.run([str(GUEST_SCRIPT)], env=env, check=True, timeout=30)
    lines = calls.read_text().splitlines()
    assert "xenstore-read console/vnc-reverse" in lines
    assert any(line.startswith("Xvnc :0 -rfbport -1 ") for line in lines)
    assert "vncconfig -display :0 -connect 192.0.2.1:5507" in lines


def test_guest_script_says_why_without_an_address(tmp_path):
    if "vncterm.connect=" in Path("/proc/cmdline").read_text():
        pytest.skip("this machine's kernel command line names a vncterm address")
    env, calls = fake_tools(tmp_path, None)
    result = subprocess.run([str(GUEST_SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "no vncterm address" in result.stderr
    assert "Xvnc" not in calls.read_text()


@pytest.mark.parametrize("unit", sorted((REPO / "contrib").glob("*.service")),
                         ids=lambda unit: unit.name)
def test_units_use_only_options_vncterm_has(unit):
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    parsed.read_string(unit.read_text().replace("\\\n", " "))
    command = parsed["Service"]["ExecStart"]
    known = set(OPTION.findall(help_text()))
    if "vncterm.py" in command:
        assert set(OPTION.findall(command)) <= known
    else:
        assert command == "/usr/local/bin/vnc-to-dom0"
