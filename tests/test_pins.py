"""Every way of installing the book pins the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    return parse_pins(deps)


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert parse_pins(pip_section) == pyproject_pins()


def test_lock_contains_every_pyproject_pin_at_the_same_version():
    lock = parse_pins((ROOT / "requirements" / "lock.txt").read_text().splitlines())
    for name, version in pyproject_pins().items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"


def test_asset_packages_are_exactly_pinned_and_not_in_lock():
    assets = parse_pins((ROOT / "requirements" / "assets.txt").read_text().splitlines())
    lock = parse_pins((ROOT / "requirements" / "lock.txt").read_text().splitlines())
    from finetune_helpers.assets import ASSETS
    assert set(assets) == {a.package for a in ASSETS if a.kind == "weights"}
    assert not set(assets) & set(lock)
