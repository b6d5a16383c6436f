"""The weights cache: atomic builds that survive a killed process, verified on every load."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune_helpers import cache

ROOT = Path(__file__).resolve().parents[1]

_KILLED_BUILD = """
import sys, time
from pathlib import Path
from finetune_helpers import cache

def build(folder):
    (folder / "weights.bin").write_bytes(b"half-written")
    print("building", flush=True)
    time.sleep(60)  # killed here, mid-build

cache.cached_build("model", {"v": 1}, build, root=Path(sys.argv[1]))
"""


def write(content: bytes):
    def build(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(content)
    return build


def test_build_then_reuse(tmp_path):
    entry = cache.cached_build("model", {"v": 1}, write(b"abc"), root=tmp_path)
    assert (entry / "weights.bin").read_bytes() == b"abc"
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    assert manifest["key"] == {"v": 1} and manifest["files"]["weights.bin"]["size"] == 3

    def must_not_run(folder):
        raise AssertionError("rebuilt a valid entry")

    assert cache.cached_build("model", {"v": 1}, must_not_run, root=tmp_path) == entry


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage):
    entry = cache.cached_build("model", {"v": 1}, write(b"0123456789"), root=tmp_path)
    weights = entry / "weights.bin"
    if damage == "flip":
        weights.write_bytes(b"0123456780")
    elif damage == "truncate":
        weights.write_bytes(b"01234")
    elif damage == "delete":
        weights.unlink()
    else:
        (entry / cache.MANIFEST).write_text("{not json")
    assert cache.check_entry(entry, {"v": 1}) is not None
    rebuilt = cache.cached_build("model", {"v": 1}, write(b"0123456789"), root=tmp_path)
    assert (rebuilt / "weights.bin").read_bytes() == b"0123456789"
    assert cache.check_entry(rebuilt, {"v": 1}) is None


def test_changed_key_rebuilds(tmp_path):
    cache.cached_build("model", {"v": 1}, write(b"old"), root=tmp_path)
    entry = cache.cached_build("model", {"v": 2}, write(b"new"), root=tmp_path)
    assert (entry / "weights.bin").read_bytes() == b"new"


def test_failed_build_leaves_nothing(tmp_path):
    def broken(folder):
        (folder / "weights.bin").write_bytes(b"partial")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        cache.cached_build("model", {"v": 1}, broken, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_killed_build_is_never_loaded_and_is_cleaned_up(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    leftovers = list(tmp_path.iterdir())
    assert not (tmp_path / "model").exists()  # nothing half-written under the entry's name
    assert leftovers and all(p.name.startswith(".model.tmp-") for p in leftovers)
    entry = cache.cached_build("model", {"v": 1}, write(b"complete"), root=tmp_path)
    assert (entry / "weights.bin").read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the dead build's folder is gone


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(cache.ENV_VAR)
    assert cache.cache_dir().name == "finetune_helpers"
