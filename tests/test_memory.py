"""finetune_helpers.memory: the peak memory fit() records is the run's own, and it is real."""

import mmap
import subprocess
import sys
from pathlib import Path

from finetune_helpers.memory import PeakMemory, current_rss_mib

ROOT = Path(__file__).resolve().parents[1]

_PEAK_SCRIPT = """
import sys
from finetune_helpers import runtime; runtime.setup(seed=0, verbose=False)
import numpy as np, paddle
from paddle import nn
from finetune_helpers.train import fit
rng = np.random.default_rng(0)
x = rng.standard_normal((4096, 256)).astype(np.float32); y = rng.integers(0, 10, 4096)
ds = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
for batch_size in map(int, sys.argv[1:]):
    paddle.seed(0)
    model = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 10))
    opt = paddle.optimizer.SGD(learning_rate=0.01, parameters=model.parameters())
    h = fit(model, paddle.io.DataLoader(ds, batch_size=batch_size), opt, 1,
            max_steps_per_epoch=1, progress=False)
    print(h.peak_rss_mib - h.start_rss_mib, h.peak_rss_mib)
"""


def test_peak_memory_grows_with_batch_size():
    # A fresh process: paddle's allocator keeps freed blocks, so in a long test session a big
    # batch may reuse memory an earlier test already took and the RSS would not grow.
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "16", "4096", "16"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    (small_delta, small_peak), (big_delta, big_peak), (again_delta, _) = [
        tuple(map(float, line.split())) for line in out.stdout.strip().splitlines()]
    assert small_peak > 0 and big_peak > 0
    # activations alone: 4096 x 4096 x 4 B = 64 MiB each
    assert big_delta > small_delta + 100, (small_delta, big_delta)
    # the peak is reset at the start of each run: a small run after a big one is small again
    assert again_delta < 50, (again_delta, big_delta)


def test_peak_memory_sees_an_allocation_freed_before_stop():
    memory = PeakMemory()
    memory.start()
    # 200 MiB of fresh pages from the kernel, touched, then unmapped before stop(). An anonymous
    # mmap, not a bytearray: after other tests, malloc may hand back memory that is already
    # resident, and then the RSS does not grow at all (seen in CI: peak == start).
    block = mmap.mmap(-1, 200 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    block.close()
    result = memory.stop()
    assert result["memory_method"] == "VmHWM"
    assert result["peak_rss_mib"] - result["start_rss_mib"] > 150
    assert result["peak_gpu_mib"] is None and current_rss_mib() > 0
