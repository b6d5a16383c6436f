"""Runtime settings applied once, before paddle is imported: threads, MKL code path, logs, seeds.

Paddle's CPU wheel calls its bundled MKL-ML, which runs one thread unless told otherwise and takes
a slow generic code path on non-Intel processors unless ``MKL_DEBUG_CPU_TYPE=5`` is set. Both
are read when the library loads, so they must be in the environment before ``import paddle``.
Measured on a 2-core AMD EPYC: 17 GFLOP/s by default, about 110 with both set
(``python -m finetune_helpers.runtime --bench``).

Usage, first thing in a notebook or script::

    from finetune_helpers import runtime
    runtime.setup(seed=0)
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field

#: Environment set by :func:`setup` when not already set by the user (``setdefault`` semantics).
QUIET_ENV = {
    "GLOG_minloglevel": "2",       # paddle's C++ info logs (pir_interpreter.cc ...)
    "GLOG_v": "0",
    "FLAGS_call_stack_level": "0",
    "HF_HUB_OFFLINE": "1",         # never let a library try a model hub behind our back
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class RuntimeReport:
    """What :func:`setup` set, and whether it could take effect."""

    threads: int
    mkl_cpu_type: str | None
    seed: int | None
    device: str = "cpu"
    effective: bool = True
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        mkl = (f"MKL_DEBUG_CPU_TYPE={self.mkl_cpu_type}" if self.mkl_cpu_type
               else "MKL native code path")
        text = (f"runtime: threads={self.threads}, {mkl} ({cpu_vendor() or 'unknown CPU'}), "
                f"glog quiet, seed={self.seed}, device={self.device}")
        if not self.effective:
            text += (" -- WARNING: paddle was imported before setup(), so the thread and MKL "
                     "settings cannot take effect: restart the kernel and call setup() first")
        return text


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup CPU quotas)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:  # cgroup v2 quota, e.g. "200000 100000" for 2 CPUs in a container
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... from /proc/cpuinfo ('' if unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def environment(threads: int | None = None) -> dict[str, str]:
    """The variables :func:`setup` would add to ``os.environ`` (existing values win)."""
    n = str(threads or available_cores())
    env = dict(QUIET_ENV)
    env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "CPU_NUM": n})
    if cpu_vendor() != "GenuineIntel":
        # MKL checks for an Intel CPU; type 5 selects its AVX2 kernels on other x86-64 CPUs.
        env["MKL_DEBUG_CPU_TYPE"] = "5"
    return env


# Paddle prints this to stderr at import whenever OMP_NUM_THREADS > 1. It is meant for
# OpenBLAS builds and data-parallel jobs; the CPU wheel uses MKL, where threads are the point.
_OMP_WARNING = re.compile(r"WARNING: OMP_NUM_THREADS set to \d+, not 1\..*?\n"
                          r"PLEASE USE OMP_NUM_THREADS WISELY\.\n", re.S)
# Noise from libraries paddlenlp imports (messages carry absolute paths, so they would also
# break nbval's comparison of stored outputs).
# Paddle's BatchNorm warns on every train-mode call site that it tracks running statistics.
_NOISY_WARNINGS = ("Setuptools is replacing distutils", "No ccache found",
                   "When training, we now always track global mean and variance",
                   # PaddleNLP 3.0.0b4's Llama calls paddle.incubate's swiglu, deprecated in 3.3.
                   r"(?s).*paddle\.incubate\.nn\.functional\.swiglu")


def _import_paddle_quietly() -> None:
    """Import paddle, dropping only its OMP_NUM_THREADS notice; anything else still shows."""
    import contextlib
    import io
    import warnings

    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import paddle  # noqa: F401  (loads MKL now, with the settings above)
    rest = _OMP_WARNING.sub("", captured.getvalue())
    if rest:
        sys.stderr.write(rest)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and (if imported) paddle."""
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    if "paddle" in sys.modules:
        sys.modules["paddle"].seed(seed)


# Fonts with Chinese glyphs that matplotlib may fall back to (requirements/apt.txt installs the
# WenQuanYi one); DejaVu Sans, matplotlib's default, has none.
CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei",
             "Source Han Sans SC")
CJK_FONT_FILES = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                  "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


def configure_matplotlib() -> list[str]:
    """Let matplotlib draw Chinese text: add installed CJK fonts as fallbacks of ``font.family``.

    Matplotlib (3.6+) falls back glyph by glyph through the families in ``font.family``, so
    Latin text keeps its usual look (DejaVu Sans) and only Chinese glyphs come from the CJK
    font. Returns the CJK fonts added (empty when none is installed or no matplotlib).
    """
    try:
        import matplotlib
        from matplotlib import font_manager
    except ImportError:
        return []
    installed = {font.name for font in font_manager.fontManager.ttflist}
    if not installed.intersection(CJK_FONTS):
        # matplotlib caches its font list; a font installed after that cache was built is
        # unknown to it until registered.
        for path in CJK_FONT_FILES:
            if os.path.exists(path):
                font_manager.fontManager.addfont(path)
        installed = {font.name for font in font_manager.fontManager.ttflist}
    cjk = [name for name in CJK_FONTS if name in installed]
    if cjk:
        # Fallback runs through the families of ``font.family`` (not through the generic
        # family's list), so the CJK fonts go after the usual family.
        families = [f for f in matplotlib.rcParams["font.family"] if f not in cjk]
        matplotlib.rcParams["font.family"] = families + cjk
    return cjk


def setup(seed: int | None = 0, threads: int | None = None, *, verbose: bool = True,
          import_paddle: bool = True) -> RuntimeReport:
    """Configure the process for fast, quiet, reproducible CPU work; call before ``import paddle``.

    Sets thread counts to the available cores, ``MKL_DEBUG_CPU_TYPE=5`` on non-Intel CPUs,
    quiets glog and Python warnings, then imports paddle (unless ``import_paddle=False``),
    seeds ``random``, numpy and paddle, and gives matplotlib a fallback font for Chinese. Values
    already in the environment are kept, so a reader can override any of them. Prints one line
    saying what was set.
    """
    already = "paddle" in sys.modules
    for key, value in environment(threads).items():
        os.environ.setdefault(key, value)
    notes = []
    if import_paddle and not already:
        _import_paddle_quietly()
    device = "cpu"
    if "paddle" in sys.modules:
        import paddle
        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            device = "gpu"
            paddle.device.set_device("gpu")
        else:
            paddle.device.set_device("cpu")
    if seed is not None:
        seed_everything(seed)
    configure_matplotlib()
    report = RuntimeReport(threads=int(os.environ["OMP_NUM_THREADS"]),
                           mkl_cpu_type=os.environ.get("MKL_DEBUG_CPU_TYPE"),
                           seed=seed, device=device, effective=not already, notes=notes)
    if verbose:
        print(report.line(), flush=True)
    return report


# ---------------------------------------------------------------------------------------------
# Benchmark: paddle matmul GFLOP/s with paddle's defaults vs with these settings.

_BENCH_CODE = r"""
import time, warnings
warnings.simplefilter("ignore")
import paddle
paddle.set_device("cpu")
n = {n}
a = paddle.randn([n, n], dtype="float32"); b = paddle.randn([n, n], dtype="float32")
for _ in range(3):
    paddle.matmul(a, b).numpy()
best = float("inf")
for _ in range({reps}):
    t = time.perf_counter(); paddle.matmul(a, b).numpy(); best = min(best, time.perf_counter() - t)
print(2 * n ** 3 / best / 1e9)
"""

_SETTING_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM", "MKL_DEBUG_CPU_TYPE")


def _bench_once(env: dict[str, str], n: int, reps: int) -> float:
    out = subprocess.run([sys.executable, "-c", _BENCH_CODE.format(n=n, reps=reps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench(n: int = 1024, reps: int = 10) -> tuple[float, float]:
    """fp32 ``n x n`` matmul GFLOP/s in fresh subprocesses: (paddle defaults, runtime settings)."""
    base = {k: v for k, v in os.environ.items() if k not in _SETTING_VARS}
    base.update({"GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore"})
    tuned = dict(base)
    tuned.update(environment())
    return _bench_once(base, n, reps), _bench_once(tuned, n, reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.runtime",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true",
                        help="measure matmul GFLOP/s with paddle's defaults and with these settings")
    parser.add_argument("--size", type=int, default=1024, help="matrix size for --bench")
    args = parser.parse_args(argv)
    env = environment()
    print("settings: " + " ".join(f"{k}={env[k]}" for k in _SETTING_VARS if k in env))
    if args.bench:
        default, tuned = bench(args.size)
        print(f"paddle defaults:  {default:7.1f} GFLOP/s (fp32 matmul {args.size}x{args.size})")
        print(f"runtime settings: {tuned:7.1f} GFLOP/s")
        print(f"speedup: {tuned / default:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
