"""The arithmetic fingerprint: stable where the arithmetic is pinned, and acted on by the tests."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_helpers import fingerprint, runtime

ROOT = Path(__file__).resolve().parents[1]


def fingerprint_parts(env_extra: dict | None = None, prefix: tuple[str, ...] = ()) -> dict:
    """This machine's fingerprint parts, computed in a fresh process with ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.ARITHMETIC_VARS}
    env.update(env_extra or {})
    out = subprocess.run([*prefix, sys.executable, "-m", "finetune_helpers.fingerprint",
                          "--json"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout[:out.stdout.rindex("}") + 1])["parts"]


@pytest.fixture(scope="module")
def reference():
    return fingerprint_parts()


def test_reproducible_fingerprint_ignores_exported_thread_counts(reference):
    assert fingerprint_parts({"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
                              "OPENBLAS_NUM_THREADS": "4"}) == reference


@pytest.mark.skipif(shutil.which("taskset") is None or runtime.available_cores() < 2,
                    reason="needs taskset and at least two CPUs")
def test_reproducible_fingerprint_same_on_one_cpu(reference):
    assert fingerprint_parts(prefix=("taskset", "-c", "0")) == reference


def test_fingerprint_is_the_same_twice_in_one_process():
    assert fingerprint.compute() == fingerprint.compute()


def test_every_part_is_named_and_explained(reference):
    assert set(reference) == set(fingerprint.PARTS)
    assert all(len(h) == 16 for h in reference.values())


def test_explain_names_the_differing_library_and_what_follows(reference):
    stored = fingerprint.record(reference, "reproducible")
    same = fingerprint.explain(reference, stored)
    assert "= the stored outputs'" in same and "bit for bit" in same
    other = dict(reference, adamw="0" * 16)
    line = fingerprint.explain(other, stored)
    assert fingerprint.differing_parts(other, stored) == ["adamw"]
    assert "Adam/AdamW update" in line and "outputs are not compared" in line
    assert "\n" not in line


def test_load_rejects_a_record_without_every_part(tmp_path):
    bad = tmp_path / "arithmetic.json"
    bad.write_text(json.dumps({"fingerprint": "x", "parts": {"matmul": "y"}}))
    with pytest.raises(ValueError, match="make notebooks"):
        fingerprint.load(bad)
    assert fingerprint.load(tmp_path / "missing.json") is None


def test_save_writes_atomically_and_round_trips(tmp_path, reference):
    path = tmp_path / "arithmetic.json"
    record = fingerprint.record(reference, "reproducible")
    fingerprint.save(record, path)
    assert fingerprint.load(path) == record
    assert [p.name for p in tmp_path.iterdir()] == ["arithmetic.json"]


def test_book_stores_a_fingerprint_made_in_reproducible_mode():
    stored = fingerprint.load(fingerprint.BOOK_FILE)
    assert stored is not None, "book/arithmetic.json is missing: run `make notebooks`"
    assert stored["mode"] == "reproducible"
    assert stored["fingerprint"] == fingerprint.combine(stored["parts"])


def _nbval_environment_notebook(stored_file: Path, strict: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in runtime.ARITHMETIC_VARS}
    env[fingerprint.FILE_ENV] = str(stored_file)
    if strict:
        env["FINETUNE_HELPERS_STRICT"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "book/environment.ipynb",
         "--nbval", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow  # re-runs book/environment.ipynb twice under nbval
def test_another_machines_fingerprint_turns_off_output_comparison(tmp_path):
    # Simulate outputs made on a machine whose Adam kernel differs from this one's.
    stored = fingerprint.load(fingerprint.BOOK_FILE)
    other = dict(stored, parts=dict(stored["parts"], adamw="0" * 16))
    other["fingerprint"] = fingerprint.combine(other["parts"])
    path = tmp_path / "arithmetic.json"
    fingerprint.save(other, path)
    lax = _nbval_environment_notebook(path, strict=False)
    assert lax.returncode == 0, lax.stdout[-3000:]
    assert "differs from the stored outputs'" in lax.stdout
    assert "outputs are not compared" in lax.stdout
    # Compared anyway, the runtime line (which shows the fingerprint) fails: the check can fail.
    strict = _nbval_environment_notebook(path, strict=True)
    assert strict.returncode == 1, strict.stdout[-3000:]
    assert "compared anyway" in strict.stdout
