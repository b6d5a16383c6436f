"""The standard tasks: fixed subsets, the budget line, and a clear error without a tokenizer."""

import numpy as np
import pytest

from finetune_helpers import tasks


def test_vision_loaders_are_fixed_and_sized():
    train, held_out = tasks.loaders(tasks.VISION)
    x, y = next(iter(train))
    assert list(x.shape) == [tasks.VISION.batch_size, 3, 32, 32]
    assert len(train.dataset) == tasks.VISION.n_train and len(held_out.dataset) == tasks.VISION.n_eval
    again, _ = tasks.loaders(tasks.VISION)
    np.testing.assert_array_equal(next(iter(again))[1].numpy(), y.numpy())


def test_text_task_needs_tokenizer_and_says_how():
    with pytest.raises(ValueError, match="zoo.load_tokenizer\\('minilm_l6'\\)"):
        tasks.loaders(tasks.TEXT)


def test_budget_line():
    assert tasks.VISION.budget == "320 images x 2 epochs (32 px), batch 32"
    assert tasks.TEXT.budget == "384 texts x 2 epochs (32 tokens), batch 32"
