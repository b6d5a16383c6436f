"""Test session set-up: reproducible arithmetic before paddle loads, and the network guard.

Environment set here is inherited by the notebook kernels that nbval starts, so the notebooks
run with exactly the settings they were saved with: the reproducible arithmetic mode, whatever
the caller exported (OMP_NUM_THREADS=4, a one-CPU affinity mask, ...).
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune_helpers import netguard, runtime  # noqa: E402

# Kernels started by nbval import tests/netguard/sitecustomize.py, which blocks the network.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "tests" / "netguard"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault(netguard.ENV_VAR, "1")
netguard.install()
os.environ[runtime.MODE_ENV] = "reproducible"
os.environ.pop(runtime.THREADS_ENV, None)
runtime.setup(seed=0, verbose=False, fingerprint=False)


@pytest.fixture
def uninstalled(monkeypatch):
    """``uninstalled("pkg", ...)``: importlib.metadata answers as if those distributions were
    not installed (``files`` and ``version`` raise PackageNotFoundError), every other as usual:
    how the loaders' "not installed, here is the pip command" errors are tested."""
    import importlib.metadata

    def hide(*names: str) -> None:
        for function in ("files", "version"):
            real = getattr(importlib.metadata, function)

            def fake(name, _real=real):
                if name in names:
                    raise importlib.metadata.PackageNotFoundError(name)
                return _real(name)

            monkeypatch.setattr(importlib.metadata, function, fake)

    return hide
