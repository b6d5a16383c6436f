"""Progress bars of the book's loops, and the one switch that turns them off.

Bars are ``tqdm.auto`` bars (a widget in Jupyter, text on stderr elsewhere), on unless
``progress=False`` or the environment variable ``FINETUNE_HELPERS_PROGRESS=0``. Why this is safe
for nbval: in a notebook the bar is one ``display_data`` output holding the widget view (which
nbval 0.11 never compares, its model id is random) and a ``text/plain`` form rendered *once, when
the bar is created*, e.g. ``train 1/3:   0%|          | 0/48 [00:00<?, ?it/s]``. That text has no
timings and depends only on the number of steps, so it is the same on every run. Later updates
change widget state, not the stored output. Without ipywidgets the bar would be stderr text full
of timings; the book's environment pins ipywidgets. Notebooks must be executed and checked with
the same value of ``FINETUNE_HELPERS_PROGRESS`` (with the bar off there is no such output).
"""

from __future__ import annotations

import os
from typing import Any

PROGRESS_ENV = "FINETUNE_HELPERS_PROGRESS"


def progress_enabled(progress: bool | None = None) -> bool:
    """``progress`` if given, else False when ``$FINETUNE_HELPERS_PROGRESS`` is 0/false/off."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A ``tqdm.auto`` bar (widget in Jupyter, stderr text elsewhere), or a disabled one."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True)
