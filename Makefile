# vncterm: `make run` serves your shell to VNC viewers, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
PEER_PACKAGES := python3-venv tigervnc-standalone-server tigervnc-tools tigervnc-viewer x11vnc \
	xvfb xterm xdotool x11-utils x11-xserver-utils xfonts-base vncsnapshot gvncviewer imagemagick \
	novnc websockify chromium console-setup-linux fonts-dejavu-core fonts-droid-fallback \
	python3-pyte python3-pil python3-serial python3-pycryptodome openssl \
	qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio \
	remmina remmina-plugin-vnc ssvnc xtightvncviewer virt-viewer tightvncserver xclip vim tmux
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300

.PHONY: help run test lint peers bench fuzz clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

# `make run` also serves browsers when websockify and noVNC are installed.
WEB_ARGS := $(if $(and $(shell command -v websockify),$(wildcard /usr/share/novnc/vnc.html)),--web 6080)

run: $(VENV)/.ready ## Serve your shell on 127.0.0.1:5900 (and browsers on 6080 if noVNC is installed)
	$(PY) vncterm.py $(WEB_ARGS) $(ARGS)

test: $(VENV)/.ready ## Run the unit, hostile-viewer and real-viewer tests
	$(PY) -m pytest -q tests

lint: $(VENV)/.ready ## Check the code with ruff
	$(VENV)/bin/ruff check .

peers: ## Install the real VNC viewers and servers the tests drive (Debian, needs root)
	$(APT) update -qq
	$(APT) install -y --no-install-recommends $(PEER_PACKAGES)

BENCH_PACKAGES := tigervnc-standalone-server tigervnc-tools xterm xfonts-base imagemagick \
	console-setup-linux qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio

bench: $(VENV)/.ready ## Time vncterm against Xvnc+xterm (installs them, needs root); table in bench/
	$(APT) update -qq
	$(APT) install -y --no-install-recommends $(BENCH_PACKAGES)
	$(PY) bench/benchmark.py $(ARGS)

FUZZ_SCALE ?= 50

fuzz: $(VENV)/.ready ## Fuzz every reader, handshake and the console 50 times longer (~15 min)
	FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q --timeout=0 --hypothesis-show-statistics tests/test_fuzz.py

clean: ## Remove the virtualenv and test artifacts
	rm -rf $(VENV) tests/artifacts .pytest_cache .ruff_cache

$(VENV)/.ready: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q atheris || echo "atheris did not install: its fuzz tests will be skipped"
	touch $@
