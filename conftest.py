"""Root conftest: apply the test environment (tests/conftest.py) even when pytest is given only
notebooks, e.g. `pytest --nbval book/environment.ipynb` (running it twice is harmless); check
the arithmetic fingerprint before nbval compares anything; print a per-notebook timing table at
the end of the run (hooks here see every item)."""

import os
import runpy
from pathlib import Path

import pytest

runpy.run_path(str(Path(__file__).parent / "tests" / "conftest.py"))

# --- The arithmetic fingerprint: can this machine reproduce the stored outputs' last bits?
#: Set to 1 to compare outputs even where the fingerprint differs (to see the differences).
STRICT_ENV = "FINETUNE_HELPERS_STRICT"
_FINGERPRINT_LINE: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):  # noqa: D103 (pytest hook)
    if not getattr(config.option, "nbval", False):
        return
    from finetune_helpers import fingerprint

    parts = fingerprint.compute()
    stored = fingerprint.load()
    line = fingerprint.explain(parts, stored)
    if stored is not None and fingerprint.differing_parts(parts, stored):
        if os.environ.get(STRICT_ENV) == "1":
            line += f" -- {STRICT_ENV}=1: compared anyway"
        else:
            # nbval's own lax mode: every cell still runs and errors still fail.
            config.option.nbval, config.option.nbval_lax = False, True
    _FINGERPRINT_LINE.append(line)


def pytest_report_header(config):  # noqa: D103 (pytest hook)
    return list(_FINGERPRINT_LINE)


# --- A per-notebook timing table at the end of the run (nbval items are cells of a notebook).
_NOTEBOOK_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):  # noqa: D103 (pytest hook)
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _NOTEBOOK_SECONDS[path] = _NOTEBOOK_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):  # noqa: D103 (pytest hook)
    for line in _FINGERPRINT_LINE:
        terminalreporter.write_line(line)
    if not _NOTEBOOK_SECONDS:
        return
    terminalreporter.section("notebook timings (nbval, wall seconds)")
    for path, seconds in _NOTEBOOK_SECONDS.items():
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_NOTEBOOK_SECONDS.values()):8.1f}  total")
