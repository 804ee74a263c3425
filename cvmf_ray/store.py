"""The run directory, through one pyarrow filesystem layer (local path, shared FS, `file://`, `s3://`).

Layout (docs/user-guide.md: the run directory): grid.json, artifacts/KEY/{meta.json, model.safetensors |
outputs.safetensors}, evaluations/KEY.json, results.parquet, failures/KEY.json (why a cell failed, until it
succeeds), checkpoints/KEY/epoch-NNNNN.pt (a training cell's last epochs, until it finishes), lock.json (the
driver that holds the run), tune/ (Ray Tune's storage_path).

Readers never see half a file: on a local or shared filesystem a file is written under a temporary name and
renamed into place; on an object store a single PUT is already atomic. An artifact is finished once its
meta.json exists (it is written last, after its tensors); the state of a whole run is one listing of
`artifacts/` and `failures/`. Damage to a finished artifact is found where it is read: the reader checks the
recorded SHA-256. Nothing is ever unpickled (safetensors, and torch.load with weights_only=True).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from cvmf_ray.errors import CellError, UsageError, first_line

META = "meta.json"
WEIGHTS = "model.safetensors"  # what a train/unlearn/quantize cell leaves
OUTPUTS = "outputs.safetensors"  # what an evaluate cell leaves: its logits, read by compare cells
CHECKPOINTS_KEPT = 2  # a torn newest checkpoint still leaves the one before it
# what each entry of a run directory is, where it exists (the layout above; lock.json: cvmf_ray/lock.py)
ENTRIES = {name: pafs.FileType.File for name in ("grid.json", "results.parquet", "lock.json")} | {
    name: pafs.FileType.Directory for name in ("artifacts", "evaluations", "failures", "checkpoints", "tune")
}
KINDS = {pafs.FileType.File: "a file", pafs.FileType.Directory: "a directory",
         pafs.FileType.Unknown: "a special file (a device, socket or pipe)"}  # fmt: skip


class CorruptArtifact(CellError):
    """An artifact exists but cannot be trusted; the cell that wrote it must be recomputed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StorageFull(OSError):
    """The results storage ran out of space: the run stops, nothing partial is left behind."""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or any URI pyarrow understands.

    Raises UsageError for a location that cannot be a run directory: empty, a relative `file://` URI, or a
    scheme pyarrow does not know.
    """
    if not uri.strip():
        raise UsageError("results location '' is empty: give a folder or a URI such as s3://bucket/prefix")
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise UsageError(f"results location {uri!r} is a relative file URI; write file:///absolute/path")
        return pafs.LocalFileSystem(), parsed.path
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UsageError(f"results location {uri!r} cannot be opened: {first_line(err)}") from None


def json_bytes(value) -> bytes:
    """A JSON file of a run as it is written: sorted keys, so the same content is the same bytes wherever it is
    copied (cvmf_ray/tracking.py logs evaluations/KEY.json's bytes)."""
    return json.dumps(value, indent=1, sort_keys=True, allow_nan=False, default=str).encode()


def run_location(results_dir: str, name: str) -> str:
    """RESULTS_DIR/NAME, for a path or a URI whose query (s3://b/p?endpoint_override=...) must stay at the end.

    A local path is made absolute here, in the driver: trials run in Ray's per-trial working directories.
    """
    filesystem(results_dir)  # refuses an empty location, a relative file URI, an unknown scheme
    if "://" not in results_dir:
        return os.path.join(os.path.abspath(os.path.expanduser(results_dir)), name)
    parsed = urlparse(results_dir)
    return parsed._replace(path=f"{parsed.path.rstrip('/')}/{name}").geturl()


@dataclass
class Listing:
    """The state of a run from one listing: which cells finished and which have a failure record."""

    done: set[str]
    failed: set[str]


class RunStore:
    """All reads and writes of one run directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.renames_atomically = self.fs.type_name == "local"  # object stores: a PUT is atomic, a move is a copy
        self._made_dirs: set[str] = set()

    # ---- checked once, before anything runs
    def probe_writable(self) -> None:
        """UsageError naming the location unless a run can be written there; writes nothing that stays.

        Locally: the nearest existing ancestor must be a writable directory (nothing is created yet). On an
        object store: a probe object is written, read back and deleted, which proves the scheme, the bucket,
        the credentials and the permissions in one go. Then every entry of the run that exists must be of its
        kind (`ENTRIES`), or the run would fail on it only after Ray started.
        """
        try:
            if self.fs.type_name == "local":
                self._probe_local_ancestor()
            else:
                probe = self.path(f".cvmf-probe-{uuid.uuid4().hex[:8]}")
                with self.fs.open_output_stream(probe) as stream:
                    stream.write(b"probe")
                with self.fs.open_input_stream(probe) as stream:
                    assert stream.read() == b"probe", "read back something else"
                self.fs.delete_file(probe)
            infos = self.fs.get_file_info([self.path(name) for name in ENTRIES])
            for info, kind in zip(infos, ENTRIES.values(), strict=True):
                self._expect(info, kind)
        except UsageError:
            raise
        except (OSError, pa.ArrowException, AssertionError) as err:
            raise UsageError(f"results location {self.uri!r} is not usable: {first_line(err)}") from None

    def _probe_local_ancestor(self) -> None:
        path = self.root
        while True:
            info = self.fs.get_file_info(path)
            if info.type != pafs.FileType.NotFound:
                self._expect(info, pafs.FileType.Directory)
                if not os.access(path, os.W_OK | os.X_OK):
                    raise UsageError(f"results location {self.uri!r} is unusable: {path!r} is not writable")
                return
            path = os.path.dirname(path)

    def _expect(self, info: pafs.FileInfo, kind: pafs.FileType) -> None:
        """UsageError naming `info`'s path when it exists as anything but `kind` (a device where a folder goes)."""
        if info.type not in (pafs.FileType.NotFound, kind):
            where = info.path if self.fs.type_name == "local" else f"{self.fs.type_name}://{info.path}"
            raise UsageError(f"results location {self.uri!r} is unusable: {where!r} is {KINDS[info.type]}, not "
                             f"{KINDS[kind]}")  # fmt: skip

    def probe_readable(self) -> None:
        """UsageError unless this is a run directory whose grid.json can be read (status, results, report)."""
        try:
            found = self.file_exists("grid.json")
        except (OSError, pa.ArrowException) as err:
            raise UsageError(f"run {self.uri!r} cannot be read: {first_line(err)}") from None
        if not found:
            raise UsageError(f"{self.uri!r} is not a cvmf-ray run directory (no grid.json)")

    # ---- paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """Where a file is, for a person: a local path, or scheme://bucket/key on an object store."""
        where = self.path(*parts)
        return where if self.fs.type_name == "local" else f"{self.fs.type_name}://{where}"

    @property
    def tune_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """Ray Tune's storage_path and storage_filesystem: this run's tune/ folder, on this run's filesystem."""
        return self.path("tune"), None if self.fs.type_name == "local" else self.fs

    # ---- raw files
    def file_exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic write: a temporary sibling renamed into place, or one PUT on an object store."""
        final = self.path(*parts)
        target = final
        if self.renames_atomically:
            folder = final.rsplit("/", 1)[0]
            if folder not in self._made_dirs:
                self.fs.create_dir(folder, recursive=True)
                self._made_dirs.add(folder)
            target = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)
            if target != final:
                self.fs.move(target, final)
        except OSError as err:
            if target != final:
                self._remove_quietly(target)
            if err.errno == errno.ENOSPC or "No space left" in str(err):
                raise StorageFull(errno.ENOSPC, f"results storage is full while writing {final}") from err
            if isinstance(err, FileNotFoundError) and target != final:
                self._made_dirs.discard(final.rsplit("/", 1)[0])  # someone removed the folder: make it again
            raise

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def write_json(self, value, *parts: str) -> None:
        self.write_bytes(json_bytes(value), *parts)

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def list_names(self, folder: str) -> list[str]:
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def remove(self, *parts: str) -> None:
        self._remove_quietly(self.path(*parts))

    def _remove_quietly(self, path: str) -> None:
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    def remove_stale_temporaries(self) -> int:
        """Delete half-written files a killed run left behind (local filesystems; they never carry a final name)."""
        if not self.renames_atomically:
            return 0
        removed = 0
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=True)
        for info in self.fs.get_file_info(selector):
            stale = ".tmp-" in info.base_name and not info.base_name.startswith("lock.json.tmp-")  # a live lock's
            if info.type == pafs.FileType.File and stale and "/tune/" not in info.path:
                self.fs.delete_file(info.path)
                removed += 1
        return removed

    # ---- the run's state
    def listing(self) -> Listing:
        """Finished cells (their meta.json exists) and failure records: one recursive listing + one flat one."""
        selector = pafs.FileSelector(self.path("artifacts"), allow_not_found=True, recursive=True)
        done = {
            info.path.rsplit("/", 2)[-2]
            for info in self.fs.get_file_info(selector)
            if info.base_name == META and info.type == pafs.FileType.File
        }
        failed = {name[: -len(".json")] for name in self.list_names("failures") if name.endswith(".json")}
        return Listing(done, failed)

    # ---- artifacts
    def save_artifact(self, key: str, meta: dict, tensor_file: str | None = None, blob: bytes = b"") -> dict:
        """Tensors first, meta last: the meta (with the tensors' hash) is what marks the cell finished."""
        meta = {**meta, "key": key, "created": time.time()}
        if tensor_file is not None:
            self.write_bytes(blob, "artifacts", key, tensor_file)
            meta.update(tensor_file=tensor_file, tensor_sha256=hashlib.sha256(blob).hexdigest(), tensor_bytes=len(blob))
        self.write_json(meta, "artifacts", key, META)
        self.remove("failures", f"{key}.json")
        return meta

    def is_done(self, key: str) -> bool:
        return self.file_exists("artifacts", key, META)

    def read_meta(self, key: str) -> dict:
        """The meta of a finished cell; CorruptArtifact when it is missing, unparsable or someone else's."""
        try:
            meta = json.loads(self.read_bytes("artifacts", key, META))
        except FileNotFoundError:
            raise CorruptArtifact(key, f"artifact {key} has no {META}") from None
        except (ValueError, UnicodeDecodeError):
            raise CorruptArtifact(key, f"artifact {key}: {META} is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise CorruptArtifact(key, f"artifact {key}: {META} belongs to another cell")
        return meta

    def read_artifact(self, key: str) -> tuple[dict, bytes]:
        """Meta and the raw tensor bytes, verified against the recorded size and SHA-256."""
        meta = self.read_meta(key)
        if "tensor_file" not in meta:
            return meta, b""
        try:
            blob = self.read_bytes("artifacts", key, meta["tensor_file"])
        except FileNotFoundError:
            raise CorruptArtifact(key, f"artifact {key}: {meta['tensor_file']} is missing") from None
        if len(blob) != meta["tensor_bytes"] or hashlib.sha256(blob).hexdigest() != meta["tensor_sha256"]:
            raise CorruptArtifact(key, f"artifact {key}: {meta['tensor_file']} does not match its recorded SHA-256")
        return meta, blob

    def discard_artifact(self, key: str) -> None:
        self.remove("artifacts", key)

    # ---- epoch checkpoints of unfinished training cells
    def save_checkpoint(self, key: str, epoch: int, blob: bytes) -> None:
        """Write epoch `epoch`'s training state, then drop all but the newest `CHECKPOINTS_KEPT`."""
        self.write_bytes(blob, "checkpoints", key, f"epoch-{epoch:05d}.pt")
        for name in self.checkpoint_names(key)[:-CHECKPOINTS_KEPT]:
            self.remove("checkpoints", key, name)

    def checkpoint_names(self, key: str) -> list[str]:
        """Saved epochs of a training cell, oldest first."""
        return [n for n in self.list_names(f"checkpoints/{key}") if n.startswith("epoch-") and n.endswith(".pt")]

    # ---- failures, evaluations, results
    def save_failure(self, key: str, error: str) -> None:
        self.write_json({"key": key, "error": error, "time": time.time()}, "failures", f"{key}.json")

    def read_failure(self, key: str) -> str | None:
        try:
            return str(self.read_json("failures", f"{key}.json")["error"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def read_parquet(self, *parts: str) -> pa.Table:
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.read_bytes(*parts)))

    def write_parquet(self, table: pa.Table, *parts: str) -> None:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes(buffer.getvalue(), *parts)
