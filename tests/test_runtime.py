"""The runtime settings: applied before paddle loads, pinned (or fast) as asked, reported."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_helpers import runtime

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env_extra: dict | None = None,
               prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter without the test session's arithmetic settings."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.ARITHMETIC_VARS}
    env.update(env_extra or {})
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_setup_pins_two_threads_whatever_the_cores_and_reports_it():
    out = run_python("from finetune_helpers import runtime; runtime.setup(seed=3)\n"
                     "import os, sys\n"
                     "print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_CBWR'],"
                     " 'paddle' in sys.modules)")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("runtime: reproducible arithmetic (2 threads, AVX2 code paths), "
                               "fingerprint "), lines[0]
    assert "seed=3" in lines[0] and "WARNING" not in lines[0]
    assert lines[1] == "2 AVX2 True"
    # Paddle's notice about OMP_NUM_THREADS is dropped; nothing else is printed to stderr.
    assert "OMP_NUM_THREADS" not in out.stderr


def test_reproducible_mode_overrides_exported_threads_fast_mode_keeps_them():
    code = ("from finetune_helpers import runtime; runtime.setup(verbose=False)\n"
            "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])")
    assert run_python(code, {"OMP_NUM_THREADS": "4"}).stdout.strip() == "2 2"
    fast = run_python(code, {"OMP_NUM_THREADS": "1", runtime.MODE_ENV: "fast"})
    assert fast.stdout.strip().split()[0] == "1"


def test_fast_mode_uses_every_core_and_forces_mkl_path_only_off_intel():
    env = runtime.environment(mode="fast")
    assert env["OMP_NUM_THREADS"] == str(runtime.available_cores())
    assert "MKL_CBWR" not in env
    if runtime.cpu_vendor() == "GenuineIntel":
        assert "MKL_DEBUG_CPU_TYPE" not in env
    else:
        assert env["MKL_DEBUG_CPU_TYPE"] == "5"


def test_fast_mode_line_warns_that_digits_may_differ():
    out = run_python("from finetune_helpers import runtime\n"
                     "runtime.setup(mode='fast', fingerprint=False)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("runtime: fast arithmetic (")
    assert "last digits may differ from the book" in out.stdout


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown arithmetic mode 'quick'.*reproducible.*fast"):
        runtime.resolve_mode("quick")


def test_setup_after_paddle_import_says_settings_cannot_take_effect():
    out = run_python("import paddle\nfrom finetune_helpers import runtime; runtime.setup()")
    assert out.returncode == 0, out.stderr
    assert "paddle was imported before setup()" in out.stdout


def test_fingerprint_leaves_random_state_and_parameter_names_untouched():
    code = ("from finetune_helpers import runtime; runtime.setup(seed=7, verbose=False, fingerprint={})\n"
            "import paddle, numpy, random\n"
            "print(paddle.nn.Linear(2, 2).weight.name, float(paddle.rand([1])),"
            " float(numpy.random.rand()), random.random())")
    with_fp, without = run_python(code.format(True)), run_python(code.format(False))
    assert with_fp.returncode == 0, with_fp.stderr
    assert with_fp.stdout == without.stdout
    assert with_fp.stdout.startswith("linear_0.w_0 ")


def test_seeding_is_reproducible():
    code = ("from finetune_helpers import runtime; runtime.setup(seed=7, verbose=False)\n"
            "import paddle, numpy, random\n"
            "print(float(paddle.rand([1])), float(numpy.random.rand()), random.random())")
    first, second = run_python(code), run_python(code)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_import_package_is_light():
    out = run_python("import sys, finetune_helpers, finetune_helpers.runtime\n"
                     "print('paddle' in sys.modules, 'paddlenlp' in sys.modules,"
                     " 'numpy' in sys.modules)")
    assert out.stdout.strip() == "False False False"


@pytest.mark.slow  # benchmarks three arithmetic modes
def test_bench_prints_each_mode_and_the_summary_line():
    out = subprocess.run([sys.executable, "-m", "finetune_helpers.runtime", "--bench",
                          "--size", "256"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    rates = {}
    for label in ("paddle defaults", "reproducible mode", "fast mode", "numpy (OpenBLAS)"):
        line = next(x for x in lines if x.startswith(label + ":"))
        rates[label] = float(line.split(":")[1].split()[0])
        assert 0 < rates[label] < 1e5, line
    match = re.fullmatch(r"speedup: (\d+\.\d)x; reproducible/fast: (\d+\.\d\d)", lines[-1])
    assert match, lines[-1]
    # The summary is computed from the rates above (rounded as printed).
    speedup = rates["fast mode"] / rates["paddle defaults"]
    assert abs(float(match[1]) - speedup) <= 0.05 * speedup + 0.05
    assert abs(float(match[2]) - rates["reproducible mode"] / rates["fast mode"]) < 0.02


def test_matplotlib_draws_chinese_after_setup():
    # requirements/apt.txt installs a CJK font; after configure_matplotlib() a figure with
    # Chinese text draws every glyph (matplotlib warns "Glyph ... missing" otherwise).
    code = ("import warnings\n"
            "from finetune_helpers import runtime\n"
            "print(runtime.configure_matplotlib())\n"
            "import matplotlib; matplotlib.use('Agg')\n"
            "import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(); ax.set_title('微调所有层 (fine-tune all layers)')\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    fig.canvas.draw()\n"
            "print(sum('missing from font' in str(w.message) for w in caught))\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    fonts, missing = out.stdout.strip().splitlines()[-2:]
    assert fonts != "[]", "no CJK font found: install fonts-wqy-microhei (requirements/apt.txt)"
    assert missing == "0"
