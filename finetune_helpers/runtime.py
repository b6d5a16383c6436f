"""Runtime settings applied once, before paddle is imported: arithmetic, threads, logs, seeds.

Two arithmetic modes (``setup(mode=...)`` or the environment variable
``FINETUNE_HELPERS_ARITHMETIC``):

- ``"reproducible"`` (the default, and the mode the book's stored outputs are made in): the same
  code gives the same bits on any x86-64 machine of the same class. A fixed thread count
  (2, whatever the machine's cores: the thread count decides how sums are split), MKL pinned to
  its AVX2 kernels (``MKL_DEBUG_CPU_TYPE=5``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``) with conditional
  numerical reproducibility (``MKL_CBWR=AVX2``: results no longer depend on memory alignment)
  and dynamic threading off (``MKL_DYNAMIC=FALSE``: a loaded machine would otherwise get
  fewer threads, and other sums), oneDNN capped at AVX2, NumPy's OpenBLAS on one thread with
  its AVX2 (Haswell) kernels. What this cannot pin: Paddle picks the kernels of Adam/AdamW
  and of train-mode batch norm by CPUID, so AVX-512 and AVX2-only machines form two classes;
  :mod:`finetune_helpers.fingerprint` tells which class a machine is in.
- ``"fast"``: every available core and the math library's best code path for this CPU
  (``MKL_DEBUG_CPU_TYPE=5`` only on non-Intel CPUs, where MKL would otherwise take a slow
  generic path). Values already in the environment win. The last digits of results may then
  differ from the book's.

All of these are read when the libraries load, so they must be in the environment before
``import paddle`` (and before ``import numpy`` for OpenBLAS).
``python -m finetune_helpers.runtime --bench`` measures what each mode costs.

Usage, first thing in a notebook or script::

    from finetune_helpers import runtime
    runtime.setup(seed=0)                  # or runtime.setup(seed=0, mode="fast")
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import MutableMapping

#: Environment set by :func:`setup` when not already set by the user (``setdefault`` semantics).
QUIET_ENV = {
    "GLOG_minloglevel": "2",       # paddle's C++ info logs (pir_interpreter.cc ...)
    "GLOG_v": "0",
    "FLAGS_call_stack_level": "0",
    "HF_HUB_OFFLINE": "1",         # never let a library try a model hub behind our back
    "TOKENIZERS_PARALLELISM": "false",
}

MODES = ("reproducible", "fast")
#: Chooses the mode when ``setup(mode=None)``; the tests and ``make notebooks`` set it.
MODE_ENV = "FINETUNE_HELPERS_ARITHMETIC"
#: Threads per process in reproducible mode when not 2 (the data-parallel launcher sets it).
THREADS_ENV = "FINETUNE_HELPERS_THREADS"
REPRODUCIBLE_THREADS = 2
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM")

#: The reproducible mode's pins besides the thread counts (forced, not ``setdefault``).
REPRODUCIBLE_PINS = {
    "MKL_DEBUG_CPU_TYPE": "5",           # MKL's AVX2 kernels, on Intel and AMD alike
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",   # the same, the documented way (Intel CPUs)
    "MKL_CBWR": "AVX2",                  # conditional numerical reproducibility
    "MKL_DYNAMIC": "FALSE",              # exactly the threads asked for, under any load
    "ONEDNN_MAX_CPU_ISA": "AVX2",        # unused by Paddle's eager CPU kernels; pinned anyway
    "OPENBLAS_NUM_THREADS": "1",         # OpenBLAS caps threads at the CPUs it may use
}
#: Set only when absent: some machines preset it to keep OpenBLAS off kernels that fail there.
OPENBLAS_CORE = ("OPENBLAS_CORETYPE", "Haswell")
#: Every variable either mode sets (beyond the quiet ones): removed to measure the libraries'
#: own defaults, or to start a child process from a clean slate.
ARITHMETIC_VARS = (*_THREAD_VARS, *REPRODUCIBLE_PINS, MODE_ENV, THREADS_ENV)


def resolve_mode(mode: str | None = None) -> str:
    """The arithmetic mode: ``mode`` if given, else ``$FINETUNE_HELPERS_ARITHMETIC``, else
    reproducible."""
    chosen = mode or os.environ.get(MODE_ENV) or "reproducible"
    if chosen not in MODES:
        raise ValueError(f"unknown arithmetic mode {chosen!r} (from "
                         f"{'the argument' if mode else MODE_ENV}); choose one of {MODES}")
    return chosen


@dataclass
class RuntimeReport:
    """What :func:`setup` set, whether it could take effect, and the arithmetic fingerprint."""

    mode: str
    threads: int
    seed: int | None
    device: str = "cpu"
    effective: bool = True
    fingerprint: str | None = None       # this process's, when computed
    book_fingerprint: str | None = None  # the stored outputs', when known
    differs_in: tuple[str, ...] = ()     # fingerprint parts that differ from the book's

    def line(self) -> str:
        if self.mode == "reproducible":
            arithmetic = f"reproducible arithmetic ({self.threads} threads, AVX2 code paths)"
        else:
            mkl = ("MKL AVX2 code path" if os.environ.get("MKL_DEBUG_CPU_TYPE") == "5"
                   else "MKL native code path")
            arithmetic = (f"fast arithmetic ({self.threads} threads, {mkl}, "
                          f"{cpu_vendor() or 'unknown CPU'}; last digits may differ from the book)")
        text = f"runtime: {arithmetic}"
        if self.fingerprint:
            text += f", fingerprint {self.fingerprint}"
            if self.book_fingerprint == self.fingerprint:
                text += " = the book's"
            elif self.book_fingerprint:
                text += (f" (the book's is {self.book_fingerprint}: differs in "
                         f"{', '.join(self.differs_in)})")
        text += f", seed={self.seed}, device={self.device}"
        if not self.effective:
            text += (" -- WARNING: paddle was imported before setup(), so the thread and "
                     "math-library settings cannot take effect: restart the kernel and call "
                     "setup() first")
        return text

    def __repr__(self) -> str:  # a notebook cell ending in setup() shows the line
        return self.line()


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


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... from /proc/cpuinfo ('' if unknown)."""
    return _cpuinfo("vendor_id")


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ('' if unknown)."""
    return _cpuinfo("model name")


def cpu_flags() -> set[str]:
    """The processor's feature flags (avx2, avx512f, ...) from /proc/cpuinfo."""
    return set(_cpuinfo("flags").split())


def environment(threads: int | None = None, mode: str | None = None) -> dict[str, str]:
    """The variables :func:`setup` would put in ``os.environ`` for this mode.

    In reproducible mode the thread count is ``threads``, else ``$FINETUNE_HELPERS_THREADS``,
    else 2, never the machine's core count; in fast mode it defaults to the available cores.
    """
    mode = resolve_mode(mode)
    env = dict(QUIET_ENV)
    if mode == "reproducible":
        n = threads or int(os.environ.get(THREADS_ENV) or REPRODUCIBLE_THREADS)
        env.update(REPRODUCIBLE_PINS)
        env[OPENBLAS_CORE[0]] = os.environ.get(OPENBLAS_CORE[0], OPENBLAS_CORE[1])
    else:
        n = threads or available_cores()
        if cpu_vendor() != "GenuineIntel":
            # MKL checks for an Intel CPU; type 5 selects its AVX2 kernels on other x86-64 CPUs.
            env["MKL_DEBUG_CPU_TYPE"] = "5"
    env.update({k: str(n) for k in _THREAD_VARS})
    env[MODE_ENV] = mode
    return env


def apply_environment(target: MutableMapping[str, str], threads: int | None = None,
                      mode: str | None = None) -> MutableMapping[str, str]:
    """Put :func:`environment` into ``target`` (``os.environ`` or a child process's env).

    In reproducible mode its values replace those already there; in fast mode existing values
    win (a reader's own settings). The mode variable itself is always set, so child processes
    (data-parallel workers) inherit the mode.
    """
    mode = resolve_mode(mode)
    for key, value in environment(threads, mode).items():
        if key == MODE_ENV or (mode == "reproducible" and key not in QUIET_ENV):
            target[key] = value
        else:
            target.setdefault(key, value)
    return target


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


def setup(seed: int | None = 0, threads: int | None = None, *, mode: str | None = None,
          verbose: bool = True, import_paddle: bool = True,
          fingerprint: bool = True) -> RuntimeReport:
    """Configure the process for quiet, reproducible (or fast) CPU work; call before ``import paddle``.

    Puts the arithmetic mode's settings in the environment (see the module docstring; in
    reproducible mode they replace values already there, in fast mode existing values win),
    quiets glog and Python warnings, imports paddle (unless ``import_paddle=False``), computes
    the arithmetic fingerprint and compares it with the book's (unless ``fingerprint=False``),
    seeds ``random``, numpy and paddle, and gives matplotlib a fallback font for Chinese.
    Prints one line saying what was set.
    """
    mode = resolve_mode(mode)
    already = "paddle" in sys.modules
    apply_environment(os.environ, threads, mode)
    if mode == "reproducible" and "numpy" in sys.modules:
        _limit_loaded_openblas(int(REPRODUCIBLE_PINS["OPENBLAS_NUM_THREADS"]))
    if import_paddle and not already:
        _import_paddle_quietly()
    device = "cpu"
    report = RuntimeReport(mode=mode, threads=int(os.environ["OMP_NUM_THREADS"]), seed=seed,
                           effective=not already)
    if "paddle" in sys.modules:
        import paddle
        if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            device = "gpu"
        paddle.device.set_device(device)
        report.device = device
        if fingerprint:
            from finetune_helpers import fingerprint as fp

            parts = fp.compute()
            report.fingerprint = fp.combine(parts)
            stored = fp.load()
            if stored is not None:
                report.book_fingerprint = stored["fingerprint"]
                report.differs_in = tuple(fp.differing_parts(parts, stored))
    if seed is not None:
        seed_everything(seed)
    configure_matplotlib()
    if verbose:
        print(report.line(), flush=True)
    return report


def _limit_loaded_openblas(threads: int) -> None:
    """numpy was imported before setup(): cap its BLAS threads now (the variable came too late)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads, user_api="blas")


# ---------------------------------------------------------------------------------------------
# Benchmark: fp32 matmul GFLOP/s with paddle's defaults, each mode, and numpy.

_BENCH_CODE = r"""
import time, warnings
warnings.simplefilter("ignore")
n = {n}
if {use_numpy}:
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype="float32"); b = rng.standard_normal((n, n), dtype="float32")
    mm = lambda: a @ b
else:
    import paddle
    paddle.set_device("cpu")
    a = paddle.randn([n, n], dtype="float32"); b = paddle.randn([n, n], dtype="float32")
    mm = lambda: paddle.matmul(a, b).numpy()
for _ in range(3):
    mm()
best = float("inf")
for _ in range({reps}):
    t = time.perf_counter(); mm(); best = min(best, time.perf_counter() - t)
print(2 * n ** 3 / best / 1e9)
"""



def _bench_once(env: dict[str, str], n: int, reps: int, use_numpy: bool = False) -> float:
    code = _BENCH_CODE.format(n=n, reps=reps, use_numpy=use_numpy)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench(n: int = 1024, reps: int = 10) -> dict[str, float]:
    """fp32 ``n x n`` matmul GFLOP/s, each in a fresh subprocess.

    Keys: ``defaults`` (paddle with none of our settings), ``reproducible``, ``fast``, and
    ``numpy`` (NumPy with this environment, for comparison).
    """
    base = {k: v for k, v in os.environ.items() if k not in ARITHMETIC_VARS}
    base.update({"GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore"})
    result = {"defaults": _bench_once(base, n, reps)}
    for mode in MODES:
        env = dict(base)
        env.update(environment(mode=mode))
        result[mode] = _bench_once(env, n, reps)
    result["numpy"] = _bench_once(dict(os.environ), n, reps, use_numpy=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_helpers.runtime",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true",
                        help="measure matmul GFLOP/s: paddle's defaults, each mode, numpy")
    parser.add_argument("--size", type=int, default=1024, help="matrix size for --bench")
    args = parser.parse_args(argv)
    for mode in MODES:
        env = environment(mode=mode)
        print(f"settings ({mode}): " + " ".join(
            f"{k}={env[k]}" for k in (*_THREAD_VARS, *REPRODUCIBLE_PINS, OPENBLAS_CORE[0])
            if k in env))
    if args.bench:
        print(f"CPU: {cpu_model() or 'unknown'} ({cpu_vendor() or '?'}), "
              f"{available_cores()} cores available; fp32 matmul {args.size}x{args.size}")
        g = bench(args.size)
        print(f"paddle defaults:    {g['defaults']:7.1f} GFLOP/s")
        print(f"reproducible mode:  {g['reproducible']:7.1f} GFLOP/s")
        print(f"fast mode:          {g['fast']:7.1f} GFLOP/s")
        print(f"numpy (OpenBLAS):   {g['numpy']:7.1f} GFLOP/s")
        print(f"speedup: {g['fast'] / g['defaults']:.1f}x; "
              f"reproducible/fast: {g['reproducible'] / g['fast']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
