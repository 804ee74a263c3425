"""The run directory, through one pyarrow filesystem layer (local path, shared FS, `file://`, `s3://`).

Layout (CONTRACT.md): grid.json, artifacts/KEY/{model.safetensors, meta.json}, evaluations/KEY.json,
results.parquet, failures/KEY.json (why a cell failed, until it succeeds), waves/STAGE.json (which
Tune experiment a wave ran as), tune/ (Ray Tune's storage_path).

Every file is written to a temporary name and moved into place, so readers never see half a file.
An artifact counts as finished only when its meta.json parses, names its own key and matches its weights
(size on the cheap check, SHA-256 when the weights are loaded). Nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cvmf_ray.errors import CellError, UsageError

WEIGHTS = "model.safetensors"
META = "meta.json"


class CorruptArtifact(CellError):
    """An artifact exists but cannot be trusted; the cell that wrote it must be recomputed."""


class StorageFull(OSError):
    """The results storage ran out of space: the grid stops, nothing partial is left behind."""


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or any URI pyarrow understands."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    if urlparse(uri).scheme == "file":
        return pafs.LocalFileSystem(), urlparse(uri).path
    return pafs.FileSystem.from_uri(uri)


def decode_weights(key: str, blob: bytes) -> dict[str, torch.Tensor]:
    """safetensors bytes -> tensors; anything else (a planted pickle, say) is a CorruptArtifact."""
    if not blob:
        return {}
    try:
        return load_safetensors(blob)
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise CorruptArtifact(f"artifact {key}: {WEIGHTS} is not a valid safetensors file ({err})") from None


class RunStore:
    """All reads and writes of one run directory."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri)

    def check_usable(self) -> None:
        """UsageError when the run directory cannot be a directory (it, or an ancestor, is a file)."""
        path = self.root
        while path and path != "/":
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                raise UsageError(f"results location {self.uri!r} is unusable: {path!r} is a file, not a directory")
            if info.type == pafs.FileType.Directory:
                return
            path = path.rsplit("/", 1)[0]

    # ---- paths
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def tune_uri(self) -> str:
        """Ray Tune's storage_path: a plain path locally, the URI otherwise."""
        return self.path("tune") if "://" not in self.uri or self.uri.startswith("file://") else self.uri + "/tune"

    # ---- raw files
    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type != pafs.FileType.NotFound

    def file_exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic write: a temporary sibling, then a rename (a single PUT on object stores)."""
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(data)
            self.fs.move(tmp, final)
        except OSError as err:
            self._remove_quietly(tmp)
            if err.errno == errno.ENOSPC or "No space left" in str(err):
                raise StorageFull(errno.ENOSPC, f"results storage is full while writing {final}") from err
            raise

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def write_json(self, value, *parts: str) -> None:
        self.write_bytes(json.dumps(value, indent=1, sort_keys=True, allow_nan=False, default=str).encode(), *parts)

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
        """Delete half-written files a killed run left behind (they never carry a final name)."""
        removed = 0
        for folder in ("", "artifacts", "evaluations", "failures", "waves"):
            selector = pafs.FileSelector(
                self.path(folder) if folder else self.root, allow_not_found=True, recursive=folder == "artifacts"
            )
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and ".tmp-" in info.base_name:
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    # ---- artifacts
    def save_artifact(self, key: str, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Weights first, meta last: the meta (with the weights' hash) is what marks the cell finished."""
        meta = {**meta, "key": key, "created": time.time()}
        if tensors is not None:
            blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
            self.write_bytes(blob, "artifacts", key, WEIGHTS)
            meta.update(weights_sha256=hashlib.sha256(blob).hexdigest(), weights_bytes=len(blob))
        self.write_json(meta, "artifacts", key, META)
        self.remove("failures", f"{key}.json")

    def read_meta(self, key: str) -> dict:
        """The meta of a finished cell; CorruptArtifact when it is missing, unparsable or inconsistent."""
        try:
            meta = json.loads(self.read_bytes("artifacts", key, META))
        except FileNotFoundError:
            raise CorruptArtifact(f"artifact {key} has no {META}") from None
        except (ValueError, UnicodeDecodeError):
            raise CorruptArtifact(f"artifact {key}: {META} is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("key") != key:
            raise CorruptArtifact(f"artifact {key}: {META} belongs to another cell")
        if "weights_sha256" in meta:
            info = self.fs.get_file_info(self.path("artifacts", key, WEIGHTS))
            if info.type != pafs.FileType.File or info.size != meta["weights_bytes"]:
                raise CorruptArtifact(f"artifact {key}: {WEIGHTS} is missing or truncated")
        return meta

    def is_done(self, key: str) -> bool:
        try:
            self.read_meta(key)
        except CorruptArtifact:
            return False
        return True

    def read_weights(self, key: str) -> tuple[dict, bytes]:
        """Meta and the raw safetensors bytes, verified against the recorded SHA-256 and decodable."""
        meta, blob = self._hashed_weights(key)
        decode_weights(key, blob)
        return meta, blob

    def load_artifact(self, key: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """Meta and weights, verified; safetensors only, never pickle."""
        meta, blob = self._hashed_weights(key)
        return meta, decode_weights(key, blob)

    def _hashed_weights(self, key: str) -> tuple[dict, bytes]:
        meta = self.read_meta(key)
        if "weights_sha256" not in meta:
            return meta, b""
        try:
            blob = self.read_bytes("artifacts", key, WEIGHTS)
        except FileNotFoundError:
            raise CorruptArtifact(f"artifact {key}: {WEIGHTS} is missing") from None
        if hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
            raise CorruptArtifact(f"artifact {key}: {WEIGHTS} does not match its recorded SHA-256")
        return meta, blob

    def discard_artifact(self, key: str) -> None:
        self.remove("artifacts", key)

    # ---- failures
    def save_failure(self, key: str, error: str) -> None:
        self.write_json({"key": key, "error": error, "time": time.time()}, "failures", f"{key}.json")

    def failures(self) -> dict[str, str]:
        found = {}
        for name in self.list_names("failures"):
            if name.endswith(".json"):
                try:
                    found[name[:-5]] = self.read_json("failures", name)["error"]
                except (ValueError, KeyError, FileNotFoundError):
                    continue
        return found
