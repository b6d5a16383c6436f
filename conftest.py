"""Root conftest: apply the test environment (tests/conftest.py) even when pytest is given only
notebooks, e.g. `pytest --nbval book/environment.ipynb` (running it twice is harmless), and
print a per-notebook timing table at the end of the run (hooks here see every item)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).parent / "tests" / "conftest.py"))


# --- A per-notebook timing table at the end of the run (nbval items are cells of a notebook).
_NOTEBOOK_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):  # noqa: D103 (pytest hook)
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _NOTEBOOK_SECONDS[path] = _NOTEBOOK_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):  # noqa: D103 (pytest hook)
    if not _NOTEBOOK_SECONDS:
        return
    terminalreporter.section("notebook timings (nbval, wall seconds)")
    for path, seconds in _NOTEBOOK_SECONDS.items():
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_NOTEBOOK_SECONDS.values()):8.1f}  total")
