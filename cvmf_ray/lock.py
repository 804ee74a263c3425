"""One driver per run directory: a lease in `lock.json`, on a shared filesystem or an object store.

The holder writes {owner, host, pid, started, since, heartbeat} and rewrites it every `HEARTBEAT_S`. Another
driver is refused while the lease is alive, with one line naming its holder. A lease is dead when its
holder's process is gone (same host: checked directly, with the process's start time against pid reuse) or
when its heartbeat is older than `STALE_S` (another host). Taking a lease: on a local or shared filesystem a
hard link publishes the lock file atomically (it fails when one exists, also over NFS); on an object store, and
when taking over a dead lease, the driver writes its lease, waits `SETTLE_S` for a racing driver's write to
land and reads it back: whoever's lease is there won. A holder whose heartbeat finds another owner has lost
the run and is told so (`lost`). `status`, `results` and `report` never take the lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import psutil

from cvmf_ray.errors import UsageError
from cvmf_ray.store import RunStore

LOCK = "lock.json"
HEARTBEAT_S = 5.0
STALE_S = 60.0  # a lease not renewed for this long belongs to a dead driver (other hosts; clocks agree to <1 s)
SETTLE_S = 1.0  # how long a racing driver's write may take to land


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class RunLock:
    def __init__(self, store: RunStore, on_lost: Callable[[str], None] = lambda message: None) -> None:
        self.store, self.on_lost = store, on_lost
        self.lease = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _process_started(os.getpid()),
            "since": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made: list[str] = []  # the folders acquire() created, deepest first

    def acquire(self) -> str | None:
        """Take the run or raise UsageError naming the live holder; returns a note when a dead lease was taken."""
        note = None
        if not (self.store.renames_atomically and self._link_new_lease()):
            holder = self._read()
            if holder is not None and holder.get("owner") != self.lease["owner"]:
                if self._alive(holder):
                    raise UsageError(f"run {self.store.uri!r} is in use by another cvmf-ray driver ({_who(holder)})")
                note = f"took over run {self.store.uri!r} from a driver that is gone ({_who(holder)})"
            self._write()
            time.sleep(SETTLE_S)
            winner = self._read()
            if winner is None or winner.get("owner") != self.lease["owner"]:
                raise UsageError(f"run {self.store.uri!r} is in use by another cvmf-ray driver ({_who(winner or {})})")
        self._thread = threading.Thread(target=self._heartbeat, name="cvmf-ray-lock", daemon=True)
        self._thread.start()
        return note

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._read()
        if holder is not None and holder.get("owner") == self.lease["owner"]:
            self.store.remove(LOCK)
        self._remove_made_folders()

    def _link_new_lease(self) -> bool:
        """Publish the lease with a hard link (atomic, fails if a lock exists); False when one exists."""
        final = self.store.path(LOCK)
        self._make_folders()
        temporary = f"{final}.tmp-{self.lease['owner'][:8]}"
        with open(temporary, "w") as out:
            json.dump({**self.lease, "heartbeat": time.time()}, out)
        try:
            os.link(temporary, final)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def _make_folders(self) -> None:
        """Make the run directory (and its missing ancestors), remembering which: the lock is the first thing a
        run writes, and a run refused after it (a GPU request the cluster cannot meet, found once Ray is up)
        must leave no trace."""
        path = self.store.root
        while not os.path.isdir(path):
            self._made.append(path)
            path = os.path.dirname(path)
        os.makedirs(self.store.root, exist_ok=True)

    def _remove_made_folders(self) -> None:
        """Remove the folders acquire() made while they are empty (nothing but the lock was written); a folder
        that existed before, or holds anything, is never removed."""
        for folder in self._made:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote something
                return

    def _heartbeat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = self._read()
                if holder is None or holder.get("owner") != self.lease["owner"]:
                    self.on_lost(f"another cvmf-ray driver took over run {self.store.uri!r} ({_who(holder or {})})")
                    return
                self._write()
                renewed = time.monotonic()
            except OSError as err:  # a storage hiccup: tried again next beat, until the lease could look dead
                if time.monotonic() - renewed > STALE_S / 2:
                    self.on_lost(f"cannot renew the lock on run {self.store.uri!r} ({err})")
                    return

    def _read(self) -> dict | None:
        try:
            value = self.store.read_json(LOCK)
        except FileNotFoundError:
            return None
        except ValueError:  # torn by hand or a crash mid-write on a filesystem without atomic rename
            return {}
        return value if isinstance(value, dict) else {}

    def _write(self) -> None:
        self.store.write_json({**self.lease, "heartbeat": time.time()}, LOCK)

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") == self.lease["host"] and isinstance(holder.get("pid"), int):
            started = _process_started(holder["pid"])
            return started is not None and (holder.get("started") is None or abs(started - holder["started"]) < 1)
        heartbeat = holder.get("heartbeat")
        return isinstance(heartbeat, (int, float)) and time.time() - heartbeat < STALE_S


def _who(holder: dict) -> str:
    since = holder.get("since")
    when = datetime.fromtimestamp(since).isoformat(timespec="seconds") if isinstance(since, (int, float)) else "?"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}"
