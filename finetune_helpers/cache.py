"""An on-disk cache for converted weights and features, written atomically and verified.

Each entry is a folder ``<cache_dir>/<name>/`` holding the files a build step wrote plus a
``MANIFEST.json`` marker with every file's size and SHA-256 and a *key* describing the inputs
(source file, converter version). An entry is used only if the marker exists, the key matches
and every file still hashes to what the marker says; otherwise it is rebuilt. A build writes
into a temporary sibling folder and is moved into place with one ``os.replace``, so a process
killed mid-build leaves no entry that is later loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ENV_VAR = "FINETUNE_HELPERS_CACHE"
MANIFEST = "MANIFEST.json"
_log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The cache root: ``$FINETUNE_HELPERS_CACHE``, else ``~/.cache/finetune_helpers``."""
    root = os.environ.get(ENV_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "finetune_helpers",
    )
    return Path(root)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        return json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check_entry(entry: Path, key: dict[str, Any]) -> str | None:
    """Return ``None`` if ``entry`` is complete and was built for ``key``, else the reason not."""
    manifest = _read_manifest(entry)
    if manifest is None:
        return "no valid manifest"
    if manifest.get("key") != key:
        return "built from other sources or by another converter version"
    for name, meta in manifest.get("files", {}).items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} has the wrong size"
        if sha256_file(path) != meta["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(root: Path, name: str) -> None:
    """Delete temporary folders left by builds of ``name`` whose process no longer runs
    (a build killed midway); a build still running in another process is left alone."""
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name[len(f".{name}.tmp-"):].split("-", 1)[0])
        except ValueError:
            pid = -1
        if pid <= 0 or not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def cached_build(name: str, key: dict[str, Any], build: Callable[[Path], None],
                 *, root: Path | None = None, verbose: bool = False) -> Path:
    """Return the folder of cache entry ``name``, building it with ``build(tmpdir)`` if needed.

    ``build`` writes its files into the folder it is given; this function writes the manifest
    and moves the folder into place atomically. A stale or corrupt entry is replaced. A build
    is logged (``logging``, INFO) rather than printed, so a notebook's output does not depend on
    whether the cache was warm; ``verbose=True`` prints it too.
    """
    root = Path(root) if root is not None else cache_dir()
    entry = root / name
    reason = check_entry(entry, key) if entry.exists() else "not built yet"
    if reason is None:
        return entry
    message = f"building cache entry {name} ({reason}) in {root}"
    _log.info(message)
    if verbose:
        print(f"[cache] {message}", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=root))
    try:
        start = time.perf_counter()
        build(tmp)
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {"key": key, "files": files,
                    "build_seconds": round(time.perf_counter() - start, 2)}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        # Move the old entry aside first: os.replace cannot overwrite a non-empty folder.
        if entry.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            os.replace(entry, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
