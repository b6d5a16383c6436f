"""finetune_helpers.schedules: the slanted triangular rate is ULMFiT's formula, step by step."""

import math

import numpy as np
import pytest

from finetune_helpers.schedules import slanted_triangular


def stlr_paper(t, T, cut_frac, ratio, lr_max):
    """Howard & Ruder 2018, eq. 3, written as in the paper."""
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + p * (ratio - 1)) / ratio


def scheduler_values(sched, n):
    values = []
    for _ in range(n):
        values.append(sched())
        sched.step()
    return np.array(values)


@pytest.mark.parametrize("T,cut_frac,ratio", [(100, 0.1, 32), (1000, 0.1, 32), (60, 0.2, 10)])
def test_stlr_equals_ulmfit_formula(T, cut_frac, ratio):
    got = scheduler_values(slanted_triangular(0.01, T, cut_frac, ratio), T + 1)
    want = np.array([stlr_paper(t, T, cut_frac, ratio, 0.01) for t in range(T + 1)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got.argmax() == math.floor(T * cut_frac) and got.max() == pytest.approx(0.01)
    assert got[0] == pytest.approx(0.01 / ratio) and got[-1] == pytest.approx(0.01 / ratio)


def test_stlr_when_cut_is_not_whole():
    # T * cut_frac = 2.5: the paper's decay length cut*(1/cut_frac - 1) = 18 != T - cut = 23,
    # so its formula would end far below lr/ratio (negative); ours ends exactly at lr/ratio.
    T = 25
    assert stlr_paper(T, T, 0.1, 32, 0.01) < 0
    got = scheduler_values(slanted_triangular(0.01, T), T + 1)
    assert got.argmax() == 2 and got[-1] == pytest.approx(0.01 / 32) and got.min() >= 0.01 / 32 - 1e-15
    np.testing.assert_allclose(got[:3], [stlr_paper(t, T, 0.1, 32, 0.01) for t in range(3)], rtol=1e-12)
    np.testing.assert_allclose(np.diff(got[2:]), -(0.01 - 0.01 / 32) / 23, rtol=1e-9)


def test_stlr_rejects_too_few_steps():
    with pytest.raises(ValueError, match=r"raise total_steps to >= 10"):
        slanted_triangular(0.01, 9)
    with pytest.raises(ValueError, match="cut_frac must be in"):
        slanted_triangular(0.01, 100, cut_frac=1.5)
