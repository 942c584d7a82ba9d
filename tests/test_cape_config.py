"""The CAPE compositions are sound, and a misspelled key in a dict the task unpacks is found before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vigil.core.config import target_argument_problems, threshold_problems

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides",
    [["task=cape"], ["experiment=mp100", "data.root=/data/mp100"], ["experiment=mp100_cross_category", "data.root=/d"]],
)
def test_cape_compositions_have_no_problems(overrides: list[str]):
    cfg = composed(*overrides)
    assert list(target_argument_problems(cfg)) == [] and list(threshold_problems(cfg)) == []


def test_misspelled_synthetic_key_and_health_threshold_are_named():
    cfg = composed("task=cape", "+data.synthetic.num_species=3", "+callbacks.health_monitor.thresholds.cape.min_kpts=1")
    (synthetic,) = target_argument_problems(cfg)
    assert synthetic.startswith("data.synthetic: SyntheticCape takes no key num_species; valid: image_size,")
    assert list(threshold_problems(cfg)) == [
        "callbacks.health_monitor.thresholds.cape: health_alerts takes no key min_kpts; valid: min_supervised_kpts"
    ]
