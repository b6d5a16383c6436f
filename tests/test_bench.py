"""FLOP counting (finetune_helpers.flops), the ideal-cost arithmetic, frozen-backward skipping,
and the benchmark script (benchmarks/bench.py, outside the package) end to end."""

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from paddle import nn

from finetune_helpers import strategies
from finetune_helpers.flops import (attention_flops, backward_factors, count_forward_flops,
                                    ideal_ratio, step_cost, trainable_blocks, training_cost)
from finetune_helpers.zoo.efficientnet import EfficientNetLite0

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    """benchmarks/bench.py by its path: a script, not a package (and site-packages may hold an
    unrelated top-level ``benchmarks`` package)."""
    spec = importlib.util.spec_from_file_location("finetune_bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
FINAL = re.compile(r"^cached head speedup: (\d+\.\d)x; freeze-bottom time/ideal: (\d+\.\d\d)$")


# ---------------------------------------------------------------------------------------------
# FLOP counter

def test_linear_flops_exact():
    lin = nn.Linear(7, 5)
    count = count_forward_flops(lin, paddle.randn([3, 4, 7]), blocks=[("lin", lin)])
    assert count.blocks == [("lin", 2 * (3 * 4) * 7 * 5)]  # 2 * rows * in * out = 840
    assert count.other == 0


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_conv2d_flops_exact(groups):
    conv = nn.Conv2D(6, 6, 3, stride=2, padding=1, groups=groups)
    count = count_forward_flops(conv, paddle.randn([2, 6, 9, 9]), blocks=[("conv", conv)])
    out_elements = 2 * 6 * 5 * 5  # (9 + 2 - 3) // 2 + 1 = 5
    assert count.total == 2 * out_elements * (6 // groups) * 3 * 3


def test_attention_matmuls_counted():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0)
    count = count_forward_flops(layer, paddle.randn([2, 5, 16]), blocks=[("layer", layer)])
    rows = 2 * 5
    linears = 4 * 2 * rows * 16 * 16 + 2 * (2 * rows * 16 * 32)   # q, k, v, out; two FFN
    matmuls = 2 * (2 * 2 * 5 * 5 * 16)                                # Q K^T and P V
    assert attention_flops(paddle.zeros([2, 5, 16]), None) == matmuls
    assert count.total == linears + matmuls


def test_per_block_counts_sum_to_total_and_match_paddle_flops():
    paddle.seed(0)
    model = EfficientNetLite0(num_classes=10)
    x = paddle.randn([1, 3, 64, 64])
    per_block = count_forward_flops(model, x)
    whole = count_forward_flops(model, x, blocks=[("all", model)])
    assert [n for n, _ in per_block.blocks][:2] == ["stem", "stage1"]
    assert all(f > 0 for f in per_block.forward())
    assert per_block.other == 0 and sum(per_block.forward()) == whole.total
    # paddle.flops counts multiply-accumulates; with BatchNorm and pooling zeroed it counts the
    # same convolutions and linear layer, so ours is exactly twice its number.
    zero = {nn.BatchNorm2D: lambda m, x, y: None, nn.AdaptiveAvgPool2D: lambda m, x, y: None}
    with contextlib.redirect_stdout(io.StringIO()):
        macs = paddle.flops(model, [1, 3, 64, 64], custom_ops=zero)
    assert whole.total == 2 * macs


def test_layers_outside_blocks_go_to_other():
    a, b, extra = nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2)
    model = nn.Sequential(a, b, extra)
    count = count_forward_flops(model, paddle.randn([5, 4]), blocks=[("a", a), ("b", b)])
    assert count.forward() == [2 * 5 * 4 * 3, 2 * 5 * 3 * 2]
    assert count.other == 2 * 5 * 2 * 2


# ---------------------------------------------------------------------------------------------
# Cost model

def test_ideal_ratio_arithmetic():
    f = [1.0, 2.0, 3.0, 4.0]
    assert ideal_ratio(f, [True] * 4) == 1.0
    assert training_cost(f, [True] * 4) == 30.0                 # 10 forward + 2 * 10 backward
    # frozen bottom 2: forward everywhere, full backward of blocks 2-3 only
    assert backward_factors([False, False, True, True]) == [0, 0, 2, 2]
    assert ideal_ratio(f, [False, False, True, True]) == pytest.approx((10 + 2 * 7) / 30)
    # a frozen block above a trainable one passes input gradients down: 1x its forward
    assert backward_factors([False, True, False, True]) == [0, 2, 1, 2]
    assert training_cost(f, [False, True, False, True]) == 10 + 2 * 2 + 3 + 2 * 4
    assert training_cost(f, [False] * 4) == 10.0                # nothing trains: forward only
    assert step_cost([(1, 5, 9), (2, 6, 10)], [False, True]) == 1 + 10
    with pytest.raises(ValueError, match="one flag per block"):
        training_cost(f, [True, False])


# ---------------------------------------------------------------------------------------------
# Paddle really skips the backward of frozen blocks below the lowest trainable one

class _CountBackward(paddle.autograd.PyLayer):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.calls += 1
        return grad


class _Probe(nn.Layer):
    def forward(self, x):
        return _CountBackward.apply(x)


def _chain():
    paddle.seed(0)
    return [(f"b{i}", nn.Sequential(nn.Linear(4, 4), _Probe())) for i in range(4)]


@pytest.mark.parametrize("frozen, expected_calls", [(0, 4), (2, 2), (3, 1)])
def test_frozen_bottom_backward_is_skipped(frozen, expected_calls):
    blocks = _chain()
    model = nn.Sequential(*[layer for _, layer in blocks])
    strategies.freeze_bottom(model, frozen, blocks=blocks)
    flags = []
    handles = [layer.register_forward_post_hook(lambda l, a, out: flags.append(out.stop_gradient))
               for _, layer in blocks]
    _CountBackward.calls = 0
    model(paddle.randn([2, 4])).sum().backward()
    for h in handles:
        h.remove()
    assert flags == [True] * frozen + [False] * (4 - frozen)
    assert _CountBackward.calls == expected_calls
    assert trainable_blocks(model, blocks=blocks) == [False] * frozen + [True] * (4 - frozen)
    for i, (_, layer) in enumerate(blocks):
        assert (layer[0].weight.grad is None) == (i < frozen)


def test_frozen_block_above_a_trainable_one_still_runs_backward():
    blocks = _chain()
    model = nn.Sequential(*[layer for _, layer in blocks])
    strategies.train_blocks(model, ["b1"], blocks=blocks)   # b2, b3 frozen above b1
    _CountBackward.calls = 0
    model(paddle.randn([2, 4])).sum().backward()
    assert _CountBackward.calls == 3                           # b3, b2, b1; not b0
    assert blocks[2][1][0].weight.grad is None                 # input gradients only


def test_efficientnet_freeze_bottom_outputs_stop_gradient():
    paddle.seed(0)
    model = EfficientNetLite0(num_classes=10)
    strategies.freeze_bottom(model, 5)
    flags = []
    from finetune_helpers.layers import blocks
    handles = [layer.register_forward_post_hook(lambda l, a, out: flags.append(out.stop_gradient))
               for _, layer in blocks(model)]
    model.train()
    model(paddle.randn([2, 3, 32, 32]))
    for h in handles:
        h.remove()
    assert flags == [True] * 5 + [False] * 5


# ---------------------------------------------------------------------------------------------
# The bench end to end

def test_bench_runs_as_a_script_outside_the_package():
    assert not (ROOT / "finetune_helpers" / "bench.py").exists()
    out = subprocess.run([sys.executable, "benchmarks/bench.py", "--rounds", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--rounds must be >= 1" in out.stderr
    assert out.stderr.startswith("usage: python benchmarks/bench.py")


@pytest.mark.slow  # times real training steps
def test_bench_quick_end_to_end(capsys):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    match = FINAL.match(lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0
    for header in ("== Fashion-MNIST (efficientnet_lite0)", "== tweet sentiment (minilm_l6)"):
        assert header in out
    for strategy in ("full", "freeze bottom 5", "train top 2", "head, through backbone",
                     "head, cached features"):
        assert re.search(rf"^{re.escape(strategy)} .* 1\.000 " if strategy == "full"
                         else rf"^{re.escape(strategy)} ", out, re.M), strategy
    assert "freeze bottom 4" in out  # MiniLM: 9 blocks
    assert "one-off extraction" in out


def test_bench_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_final_line_takes_the_worse_task():
    def result(task, head, cached, full, fb, ideal):
        rows = [bench.Row("full", 100, [full]), bench.Row("freeze bottom 1", 50, [fb], ideal),
                bench.Row("head, through backbone", 1, [head]),
                bench.Row("head, cached features", 1, [cached])]
        return bench.TaskResult(task, "m", 1, 1, ["a", "b"], 1, 0, rows, [1, 1], None, 0.0)
    a = result("A", head=10.0, cached=0.5, full=4.0, fb=3.0, ideal=0.5)   # 20x, 1.50
    b = result("B", head=10.0, cached=0.25, full=4.0, fb=2.0, ideal=0.5)  # 40x, 1.00
    which, line = bench.final_line([a, b])
    assert line == "cached head speedup: 20.0x; freeze-bottom time/ideal: 1.50"
    assert "speedup from A" in which and "time/ideal from A" in which
    assert np.isclose(b.cached_speedup, 40.0)
