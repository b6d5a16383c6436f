"""An arithmetic fingerprint: a tiny canonical computation whose bits identify a machine's math.

A 20-step fine-tuning run is chaotic: the last bit of one float can change a printed accuracy.
So the book's stored outputs reproduce only where the arithmetic is bit-identical to the machine
that made them. This module runs one small computation through each library whose results can
depend on the processor or the thread count, hashes the bits of each part, and compares them
with the fingerprint stored beside the notebooks (``book/arithmetic.json``, written by
``make notebooks``). Where they differ, the test suite says so in one line and runs the
notebooks without comparing their outputs, instead of failing with dozens of last-digit diffs.

Parts (each hashed on its own, so a difference can be traced to a library):

- ``matmul``: matrix and batched products (Paddle's bundled MKL);
- ``conv``: a dense and a depthwise convolution (im2col + MKL, and Paddle's own loops);
- ``elementwise``: layer norm, softmax, GELU, exp/tanh, a reduction, cross-entropy;
- ``batchnorm``: batch norm in train mode (measured: its bits differ between AVX-512 and
  AVX2-only CPUs even with the math library pinned);
- ``backward``: gradients of a tiny conv + layer-norm network;
- ``adamw``: Paddle's AdamW and Adam updates on fixed gradients. Paddle picks their CPU kernel
  by CPUID: a JIT kernel with fused multiply-adds where the CPU has AVX-512, a plain C++ loop
  elsewhere, and nothing turns that choice off;
- ``numpy``: NumPy's OpenBLAS products (scikit-learn's probes run on them).

Usage::

    python -m finetune_helpers.fingerprint            # this machine vs the book's, one line
    python -m finetune_helpers.fingerprint --write    # store this machine's (make notebooks)

Call it after ``runtime.setup()``: it measures the arithmetic the process was configured for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

#: Where the fingerprint of the machine that made the stored outputs lives.
BOOK_FILE = Path(__file__).resolve().parents[1] / "book" / "arithmetic.json"
#: Another file to compare with instead (the tests use it to simulate another machine).
FILE_ENV = "FINETUNE_HELPERS_ARITHMETIC_FILE"

#: What each part exercises, for the one-line explanation of a difference.
PARTS = {
    "matmul": "matrix products (MKL)",
    "conv": "convolutions",
    "elementwise": "element-wise kernels (layer norm, softmax, GELU, ...)",
    "batchnorm": "batch norm in train mode (Paddle's kernel differs between AVX-512 and AVX2 CPUs)",
    "backward": "gradients",
    "adamw": "the Adam/AdamW update (Paddle picks an AVX-512 JIT kernel by CPUID; no switch)",
    "numpy": "NumPy's OpenBLAS",
}


def _digest(*arrays: Any) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if hasattr(a, "numpy") else a
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def compute() -> dict[str, str]:
    """Run the canonical computation on the CPU and return one hash per part.

    Deterministic inputs come from NumPy's seeded ``Generator``; Paddle's global random state,
    device and parameter-name counters are left as they were, so calling this inside a notebook
    changes nothing the notebook prints afterwards. Takes well under a second. Changing this
    computation changes every fingerprint: then store the new one with ``--write`` on the
    machine that made the book's outputs (or re-execute all notebooks with ``make notebooks``).
    """
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    rng = np.random.default_rng(20241201)

    def t(*shape: int, grad: bool = False) -> "paddle.Tensor":
        return paddle.to_tensor(rng.standard_normal(shape).astype("float32"),
                                place=paddle.CPUPlace(), stop_gradient=not grad)

    previous_device = paddle.get_device()
    paddle.set_device("cpu")
    try:
        with paddle.no_grad():
            matmul = _digest(paddle.matmul(t(384, 384), t(384, 384)),
                             paddle.matmul(t(2048, 96), t(96, 384)),
                             paddle.matmul(t(4, 6, 32, 32), t(4, 6, 32, 32), transpose_y=True))
            x = t(4, 16, 24, 24)
            conv = _digest(F.conv2d(x, t(32, 16, 3, 3), padding=1),
                           F.conv2d(x, t(16, 1, 5, 5), padding=2, groups=16))
            y = t(64, 384)
            labels = paddle.to_tensor(rng.integers(0, 10, (64,)), place=paddle.CPUPlace())
            elementwise = _digest(
                F.layer_norm(y, [384], t(384), t(384)), F.softmax(3 * y, axis=-1), F.gelu(y),
                paddle.exp(y) + paddle.tanh(y), y.sum(axis=0), F.cross_entropy(t(64, 10), labels))
            batchnorm = _digest(F.batch_norm(x, t(16), t(16).abs(), t(16), t(16), training=True))
        # Backward: a conv, a ReLU, a layer norm and a linear map, gradients of every input.
        xs, wc = t(4, 3, 16, 16, grad=True), t(8, 3, 3, 3, grad=True)
        wl = t(8 * 14 * 14, 10, grad=True)
        h = F.relu(F.conv2d(xs, wc)).flatten(1)
        loss = F.cross_entropy(paddle.matmul(F.layer_norm(h, [h.shape[1]]), wl), labels[:4])
        loss.backward()
        backward = _digest(loss, xs.grad, wc.grad, wl.grad)
        adamw = _optimizer_digest(rng)
    finally:
        paddle.set_device(previous_device)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((200, 300))
    numpy = _digest(a @ b, a.astype("float32") @ b.astype("float32"), a[:, :1].T @ a)
    return {"matmul": matmul, "conv": conv, "elementwise": elementwise, "batchnorm": batchnorm,
            "backward": backward, "adamw": adamw, "numpy": numpy}


def _optimizer_digest(rng: Any) -> str:
    """Three AdamW steps and one Adam step on fixed gradients (numel 3000: chunks and a tail)."""
    import paddle

    init = rng.standard_normal(3000).astype("float32")
    grads = [paddle.to_tensor(rng.standard_normal(3000).astype("float32")) for _ in range(4)]
    with paddle.utils.unique_name.guard():  # leave the caller's parameter names untouched
        param = paddle.create_parameter(
            [3000], "float32", default_initializer=paddle.nn.initializer.Assign(init))
        adamw = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=[param], weight_decay=0.1)
        adam = paddle.optimizer.Adam(learning_rate=1e-2, parameters=[param])
        for i, optimizer in enumerate((adamw, adamw, adamw, adam)):
            (param * grads[i]).sum().backward()  # the gradient is exactly grads[i]
            optimizer.step()
            optimizer.clear_grad()
    return _digest(param)


def combine(parts: dict[str, str]) -> str:
    """The short fingerprint of a set of part hashes (8 hex digits)."""
    text = ";".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def machine() -> dict[str, str]:
    """What the reader needs to know about the machine that made a fingerprint."""
    from finetune_helpers.runtime import cpu_flags, cpu_model, cpu_vendor

    isa = [f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in cpu_flags()]
    return {"cpu": cpu_model(), "vendor": cpu_vendor(), "isa": " ".join(isa),
            "arch": platform.machine(), "python": platform.python_version()}


def record(parts: dict[str, str], mode: str) -> dict[str, Any]:
    """The JSON object stored in ``book/arithmetic.json``."""
    return {"fingerprint": combine(parts), "mode": mode, "parts": parts, "made_on": machine()}


def book_file() -> Path:
    """The stored record: ``$FINETUNE_HELPERS_ARITHMETIC_FILE`` if set, else the book's."""
    return Path(os.environ.get(FILE_ENV) or BOOK_FILE)


def load(path: Path | None = None) -> dict[str, Any] | None:
    """The stored fingerprint record, or None when there is none (e.g. package used alone)."""
    path = path or book_file()
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict) or set(data.get("parts", {})) != set(PARTS):
        raise ValueError(f"{path} is not an arithmetic fingerprint record with parts "
                         f"{sorted(PARTS)}; regenerate it with `make notebooks`")
    return data


def save(data: dict[str, Any], path: Path | None = None) -> None:
    """Write the record atomically (temporary file, then rename)."""
    path = Path(path or book_file())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def differing_parts(current: dict[str, str], stored: dict[str, Any]) -> list[str]:
    """Names of the parts whose bits differ from the stored record's."""
    return [k for k in PARTS if current.get(k) != stored["parts"].get(k)]


def explain(current: dict[str, str], stored: dict[str, Any] | None) -> str:
    """One line: does this machine reproduce the stored outputs' arithmetic, and what follows."""
    fp = combine(current)
    if stored is None:
        return f"arithmetic fingerprint {fp}; no stored fingerprint to compare with"
    diff = differing_parts(current, stored)
    if not diff:
        return (f"arithmetic fingerprint {fp} = the stored outputs' (made on "
                f"{stored['made_on'].get('cpu', '?')}, {stored['made_on'].get('isa', '?')}): "
                "this machine reproduces them bit for bit")
    what = "; ".join(PARTS[k] for k in diff)
    return (f"arithmetic fingerprint {fp} differs from the stored outputs' {stored['fingerprint']}"
            f" (made on {stored['made_on'].get('cpu', '?')}, "
            f"{stored['made_on'].get('isa', '?')}) in: {what}. This machine cannot reproduce "
            "their last bits, so short training runs may print other numbers: the notebooks "
            "are run and must not fail, but their outputs are not compared")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.fingerprint",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true",
                        help="store this machine's fingerprint in book/arithmetic.json")
    parser.add_argument("--json", action="store_true", help="print this machine's record")
    args = parser.parse_args(argv)
    from finetune_helpers import runtime

    report = runtime.setup(seed=None, verbose=False, fingerprint=False)
    parts = compute()
    if args.json:
        print(json.dumps(record(parts, report.mode), indent=2, sort_keys=True))
    if args.write:
        save(record(parts, report.mode))
        print(f"wrote {book_file()}")
    print(explain(parts, load()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
