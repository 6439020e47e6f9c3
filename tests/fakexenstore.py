"""A fake xenstore for tests: the five command-line tools vncterm uses, backed by a JSON file.

Xen's tools are one program, `xenstore_client.c`, that picks its verb from the name it was run
as (`xenstore-read`) or from its first argument (`xenstore read`). This file does the same, and
`install(folder, store)` writes five tiny shell wrappers named like the real tools into a folder,
each running this file with the store's path baked in. A test puts that folder on PATH, or hands
`folder/xenstore-` to vncterm as `--xenstore-prefix`, and drives the store with the `Store` class.

What the real tools do, and the fakes copy (checked against xen's tools/xenstore/xenstore_client.c
and xenstored's fire_watches):

- `xenstore-read PATH` prints the value and a newline; a missing key prints "couldn't read path
  PATH" on stderr and exits 1. A directory is a key too: its value is usually "".
- `xenstore-write PATH VALUE` creates the missing parents, with "" as their values.
- `xenstore-rm PATH` removes the key and everything under it; a missing key is fine as long as
  its parent exists. With `-t` it then removes each parent left empty with an empty value.
- `xenstore-list PATH` prints the names of PATH's children, one a line; a missing PATH prints
  "xenstore-list: could not list path PATH" on stderr and exits 1.
- `xenstore-watch PATH...` prints each PATH once straight away (xenstored fires every new watch
  once), then one line per change: the path that changed, at or under a PATH, or that PATH
  itself when a parent was removed. It prints only the path, never the watch token. A write
  that stores the value already there is a change too.
- `xenstore-watch @introduceDomain` and `@releaseDomain` watch xenstored's special events: the
  name once straight away, then once per domain introduced or released. The fake stands in for
  the hypervisor with the store itself: a new `/local/domain/N` directory is an introduction, a
  removed one a release. (Real xenstored fires them when the toolstack introduces the domain
  and when the hypervisor reports it dead; libxl writes the directory first and removes it
  last, so the order a watcher sees is the same.)

The store is a JSON file, replaced atomically on every write and guarded by a lock file, so a
reader never sees half of it. It holds each path's value and how many times it was written: that
is how the fake watch sees a write of an unchanged value. The fake watch polls the file every
20 ms. That is scaffolding, and the only polling in the picture; the real xenstored pushes
events. Every run of a tool appends one line to `STORE.calls`, so a test can count how often
vncterm asked.
"""

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

VERBS = ("read", "write", "rm", "watch", "list")
SPECIAL_WATCHES = ("@introduceDomain", "@releaseDomain")
DOMAINS = "/local/domain"
WATCH_INTERVAL = 0.02


class Store:
    """The JSON file behind the fake tools, for tests to read and change directly."""

    def __init__(self, path):
        self.path = Path(path)
        self.calls_path = Path(f"{path}.calls")
        if not self.path.exists():
            self._save({"values": {}, "writes": {}})

    def read(self, key):
        return self.load().get(key)

    def write(self, key, value):
        with self._locked() as store:
            tree = store["values"]
            parts = key.strip("/").split("/")
            for depth in range(1, len(parts)):
                tree.setdefault("/" + "/".join(parts[:depth]), "")
            tree[key] = value
            store["writes"][key] = store["writes"].get(key, 0) + 1

    def rm(self, key, tidy=False):
        """Remove key and its subtree (and, tidy, empty parents); False if its parent is missing."""
        with self._locked() as store:
            tree = store["values"]
            parent = key.rsplit("/", 1)[0] or "/"
            if key not in tree and parent not in tree and parent != "/":
                return False
            for path in [path for path in tree if within(path, key)]:
                del tree[path]
            while tidy and tree.get(parent) == "" and not any(within(p, parent) for p in tree
                                                              if p != parent):
                del tree[parent]
                parent = parent.rsplit("/", 1)[0]
            return True

    def children(self, key):
        """The names directly under key, or None if there is no key."""
        tree = self.load()
        if key not in tree:
            return None
        prefix = key.rstrip("/") + "/"
        return sorted({path[len(prefix):].split("/")[0] for path in tree
                       if path.startswith(prefix)})

    def domains(self):
        """The names under /local/domain (empty if there is none)."""
        return set(self.children(DOMAINS) or ())

    def load(self):
        """Every path and its value."""
        return self._load()["values"]

    def snapshot(self, key):
        """Each path at or under key, with its value and how often it was written."""
        store = self._load()
        return {path: (value, store["writes"].get(path, 0))
                for path, value in store["values"].items() if within(path, key)}

    def _load(self):
        return json.loads(self.path.read_text())

    def calls(self, verb=None):
        """The tool runs so far, as lists of arguments, optionally only those of one verb."""
        try:
            lines = self.calls_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        runs = [json.loads(line) for line in lines]
        return [run for run in runs if verb is None or run[0] == verb]

    def log_call(self, argv):
        with open(self.calls_path, "a") as file:
            file.write(json.dumps(argv) + "\n")

    @contextlib.contextmanager
    def _locked(self):
        with open(f"{self.path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            store = self._load()
            yield store
            self._save(store)

    def _save(self, store):
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(store, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


def within(path, key):
    """True if path is key or lies under it."""
    return path == key or path.startswith(key.rstrip("/") + "/")


def install(folder, store_path):
    """Write xenstore-read/-write/-rm/-watch wrappers into folder; return the prefix for them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for verb in VERBS:
        wrapper = folder / f"xenstore-{verb}"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec '{sys.executable}' '{Path(__file__).resolve()}' '{store_path}' {verb} \"$@\"\n")
        wrapper.chmod(0o755)
    return f"{folder}/xenstore-"


def watch(store, keys):
    """Print each key, then every path under one that changes, until stdout closes or the
    parent dies.

    The real tool outlives a parent killed by SIGKILL until its next event; a test store may
    never change again, so the fake also leaves when it is orphaned.
    """
    parent = os.getppid()
    before = {key: store.snapshot(key) for key in keys}
    for key in keys:
        print(key, flush=True)
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
        for key in keys:
            after = store.snapshot(key)
            changed = sorted(path for path in before[key].keys() | after.keys()
                             if before[key].get(path) != after.get(path))
            if before[key] and not after:
                changed = [key]
            for path in changed:
                print(path, flush=True)
            before[key] = after


def watch_domains(store, event):
    """Print event, then once per domain introduced (@introduceDomain) or released."""
    parent = os.getppid()
    before = store.domains()
    print(event, flush=True)
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
        after = store.domains()
        fired = after - before if event == "@introduceDomain" else before - after
        for _ in fired:
            print(event, flush=True)
        before = after


def remove(store, key, tidy=False):
    if not store.rm(key, tidy):
        print(f"xenstore-rm: could not remove path {key}", file=sys.stderr)
        return 1
    return 0


def main(argv):
    store_path, verb, *arguments = argv
    store = Store(store_path)
    store.log_call([verb, *arguments])
    if verb == "read" and len(arguments) == 1:
        value = store.read(arguments[0])
        if value is None:
            print(f"xenstore-read: couldn't read path {arguments[0]}", file=sys.stderr)
            return 1
        print(value)
    elif verb == "write" and len(arguments) == 2:
        store.write(*arguments)
    elif verb == "rm" and arguments[:1] == ["-t"] and len(arguments) == 2:
        return remove(store, arguments[1], tidy=True)
    elif verb == "rm" and len(arguments) == 1:
        return remove(store, arguments[0])
    elif verb == "list" and len(arguments) == 1:
        names = store.children(arguments[0])
        if names is None:
            print(f"xenstore-list: could not list path {arguments[0]}", file=sys.stderr)
            return 1
        for name in names:
            print(name)
    elif verb == "watch" and arguments:
        try:
            if arguments[0] in SPECIAL_WATCHES and len(arguments) == 1:
                watch_domains(store, arguments[0])
            else:
                watch(store, arguments)
        except (BrokenPipeError, KeyboardInterrupt):
            return 0
    else:
        wanted = {"write": "one key, one value", "watch": "keys"}.get(verb, "one key")
        print(f"Usage: xenstore-{verb} (fake: {wanted})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
