"""finetune_helpers.batches: batches and model outputs of every form, and IGNORE_INDEX defined
once, in a module that neither the loop nor the data-parallel code needs the other for."""

import subprocess
import sys
from pathlib import Path

import paddle
import pytest

from finetune_helpers.batches import batch_size, call_model, output_field, split_batch

ROOT = Path(__file__).resolve().parents[1]


def test_output_field_reads_every_output_form():
    logits, loss = paddle.rand([2, 3]), paddle.to_tensor(1.5)

    class Out(dict):  # like PaddleNLP's ModelOutput: a dict with attributes
        def __getattr__(self, name):
            return self.get(name)

    assert output_field(logits, "logits") is logits and output_field(logits, "loss") is None
    assert output_field((loss, logits), "loss") is loss
    assert output_field((loss, logits), "logits") is logits
    assert output_field((logits, paddle.rand([2, 4])), "logits") is logits
    assert output_field((logits,), "loss") is None
    assert output_field(Out(loss=loss, logits=logits), "logits") is logits
    assert output_field(Out(logits=logits), "loss") is None


def test_split_batch_and_call_model_for_tuples_and_dicts():
    x, y = paddle.rand([4, 3]), paddle.to_tensor([0, 1, 0, 1])
    assert split_batch((x, y)) == (x, y) and split_batch((x,)) == (x, None)
    inputs, labels = split_batch({"input_ids": x, "labels": y})
    assert list(inputs) == ["input_ids"] and labels is y
    assert batch_size(inputs, labels) == 4 and batch_size({"input_ids": x}, None) == 4
    assert call_model(lambda input_ids, scale=1: input_ids * scale, inputs, scale=2) is not None
    with pytest.raises(ValueError, match="return a dict from the collate function"):
        split_batch((x, y, y))


def test_ignore_index_is_defined_once_and_imports_no_cycle():
    code = ("import sys\n"
            "from finetune_helpers.zoo import smollm2\n"
            "print('paddle' in sys.modules)\n"
            "from finetune_helpers import batches, distributed\n"
            "print('finetune_helpers.train' in sys.modules)\n"
            "from finetune_helpers import train\n"
            "print(smollm2.IGNORE_INDEX is batches.IGNORE_INDEX is distributed.IGNORE_INDEX,"
            " batches.IGNORE_INDEX)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # zoo.smollm2 stays light; distributed does not import train; one value for all three
    assert out.stdout.split() == ["False", "False", "True", "-100"]
