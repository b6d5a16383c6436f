"""Peak memory of a training run: what freezing saves, measured the same way on every machine.

:class:`PeakMemory` records the resident memory (RSS) of the process between ``start()`` and
``stop()``, and on a GPU the peak of paddle's allocated device memory. :func:`current_rss_mib`
is the resident memory now. :func:`finetune_helpers.train.fit` uses both for its history.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import paddle

from finetune_helpers.batches import on_gpu


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (/proc, else psutil, else the lifetime peak)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class PeakMemory:
    """Peak resident memory (RSS) of the process between :meth:`start` and :meth:`stop`.

    On Linux the kernel's own high-water mark is used: writing ``5`` to
    ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS, and ``VmHWM`` read at the end
    is the true peak, including short spikes inside a step. Elsewhere (or if that file cannot be
    written) the RSS is sampled after every step, which misses spikes inside a step. On a GPU the
    peak of paddle's allocated device memory is recorded too.
    """

    def __init__(self) -> None:
        self.method = ""
        self.start_mib = 0.0
        self._sampled = 0.0

    def start(self) -> None:
        """Reset the high-water mark (or the sampled peak) to the memory in use now."""
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled RSS"
        self.start_mib = self._sampled = current_rss_mib()
        if on_gpu():
            paddle.device.cuda.reset_max_memory_allocated()

    def sample(self) -> None:
        """Record the RSS now (only needed where the kernel's high-water mark is unavailable)."""
        if self.method != "VmHWM":
            self._sampled = max(self._sampled, current_rss_mib())

    def stop(self) -> dict[str, Any]:
        """``peak_rss_mib``, ``start_rss_mib``, ``peak_gpu_mib`` (None on CPU), ``memory_method``."""
        peak = _status_kib("VmHWM") if self.method == "VmHWM" else None
        peak_mib = peak / 1024 if peak is not None else max(self._sampled, current_rss_mib())
        gpu = paddle.device.cuda.max_memory_allocated() / 2**20 if on_gpu() else None
        return {"peak_rss_mib": round(peak_mib, 1), "start_rss_mib": round(self.start_mib, 1),
                "peak_gpu_mib": None if gpu is None else round(gpu, 1),
                "memory_method": self.method}
