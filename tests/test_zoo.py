"""The zoo's name registry: offline names load, online names go to the hub loaders, bad names
get the list of valid ones."""

import subprocess
import sys
from pathlib import Path

import pytest

from finetune_helpers import zoo

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        zoo.load_model("resnet-50-typo")
    for name in ("efficientnet_lite0", "minilm_l6", "smollm2_135m", "resnet50", "ernie-3.0-mini-zh"):
        assert name in str(err.value)


def test_offline_names_load_with_a_new_head():
    model = zoo.load_model("efficientnet_lite0", num_classes=7)
    assert model.fc.weight.shape == [1280, 7] and not model.training
    assert zoo.load_model("minilm_l6", num_classes=3).classifier.weight.shape == [384, 3]
    with pytest.raises(ValueError, match="causal language model"):
        zoo.load_model("smollm2_135m", num_classes=2)
    assert len(zoo.imagenet_classes()) == 1000


@pytest.mark.parametrize("name", ["resnet18", "ernie-3.0-mini-zh"])
def test_online_names_reach_for_the_hub_and_say_what_to_use_offline(name):
    # The test run blocks the network, so the real hub loader fails at once; the error names
    # the offline alternatives instead of a bare connection error.
    with pytest.raises(RuntimeError) as err:
        zoo.load_model(name)
    assert "model hub" in str(err.value) and "efficientnet_lite0" in str(err.value)


def test_verify_cli_lists_names():
    out = subprocess.run([sys.executable, "-m", "finetune_helpers.zoo", "list"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "smollm2_135m" in out.stdout
