"""The linear probe: standardised logistic regression, accuracy in percent, clear errors."""

import numpy as np
import pytest

from finetune_helpers import probes


def test_probe_separates_a_linear_task_and_ignores_feature_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    scaled = x * np.array([1e3, 1e-3, 1.0, 1.0, 1.0])   # standardising undoes this
    a = probes.probe_accuracy(x[:300], y[:300], x[300:], y[300:], C=1.0)
    b = probes.probe_accuracy(scaled[:300], y[:300], scaled[300:], y[300:], C=1.0)
    assert a > 90.0 and a == pytest.approx(b, abs=1.0)


def test_strong_regularisation_pulls_towards_the_majority_class():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = np.r_[np.zeros(150, int), np.ones(50, int)]
    weak = probes.probe_accuracy(x, y, x, y, C=1e-8)
    assert weak == pytest.approx(75.0)   # every example predicted as the majority class


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one label per feature row"):
        probes.probe_accuracy(np.zeros((3, 2)), [0, 1], np.zeros((2, 2)), [0, 1], C=1.0)
