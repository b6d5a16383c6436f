"""Root conftest: apply the test environment (tests/conftest.py) even when pytest is given only
notebooks, e.g. `pytest --nbval book/environment.ipynb`. Running it twice is harmless."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).parent / "tests" / "conftest.py"))
