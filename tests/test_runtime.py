"""The runtime settings: applied before paddle loads, reported, and measurably faster."""

import os
import subprocess
import sys
from pathlib import Path

from finetune_helpers import runtime

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CPU_NUM", "MKL_DEBUG_CPU_TYPE")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_setup_sets_threads_before_paddle_and_reports_it():
    out = run_python("from finetune_helpers import runtime; runtime.setup(seed=3)\n"
                     "import os, sys; print(os.environ['OMP_NUM_THREADS'], 'paddle' in sys.modules)")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    cores = runtime.available_cores()
    assert lines[0].startswith(f"runtime: threads={cores}, ")
    assert "seed=3" in lines[0] and "WARNING" not in lines[0]
    assert lines[1] == f"{cores} True"
    # Paddle's notice about OMP_NUM_THREADS is dropped; nothing else is printed to stderr.
    assert "OMP_NUM_THREADS" not in out.stderr


def test_setup_after_paddle_import_says_settings_cannot_take_effect():
    out = run_python("import paddle\nfrom finetune_helpers import runtime; runtime.setup()")
    assert out.returncode == 0, out.stderr
    assert "paddle was imported before setup()" in out.stdout


def test_mkl_code_path_only_forced_on_non_intel_cpus():
    env = runtime.environment()
    if runtime.cpu_vendor() == "GenuineIntel":
        assert "MKL_DEBUG_CPU_TYPE" not in env
    else:
        assert env["MKL_DEBUG_CPU_TYPE"] == "5"


def test_user_settings_win():
    out = run_python("from finetune_helpers import runtime; runtime.setup(verbose=False)\n"
                     "import os; print(os.environ['OMP_NUM_THREADS'])", {"OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "1"


def test_seeding_is_reproducible():
    code = ("from finetune_helpers import runtime; runtime.setup(seed=7, verbose=False)\n"
            "import paddle, numpy, random\n"
            "print(float(paddle.rand([1])), float(numpy.random.rand()), random.random())")
    first, second = run_python(code), run_python(code)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_import_package_is_light():
    out = run_python("import sys, finetune_helpers, finetune_helpers.runtime\n"
                     "print('paddle' in sys.modules, 'paddlenlp' in sys.modules)")
    assert out.stdout.strip() == "False False"


def test_bench_prints_speedup_line():
    out = subprocess.run([sys.executable, "-m", "finetune_helpers.runtime", "--bench", "--size", "256"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("speedup: ") and last.endswith("x")
    assert float(last[len("speedup: "):-1]) > 0


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
