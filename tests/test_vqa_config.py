"""VQA configuration: every dict a VQA target unpacks is checked key by key before any work starts."""

from __future__ import annotations

import pytest
from omegaconf import open_dict
from test_config import compose_train

from vigil.core.config import check_target_arguments, threshold_problems
from vigil.core.errors import ConfigError
from vigil.tasks.vqa.health import health_alerts
from vigil.tasks.vqa.module import VQAModule

HF_VLM = ["task=vqa", "model=hf_vlm", "model.name_or_path=some/checkpoint"]


def test_the_vqa_compositions_validate():
    check_target_arguments(compose_train(["task=vqa"])[0])
    check_target_arguments(compose_train(HF_VLM)[0])


def test_a_misspelled_tiny_model_key_is_one_config_error_naming_it():
    cfg, _ = compose_train(["task=vqa"])
    with open_dict(cfg):
        cfg.model.tiny.hiden_size = 64
    # data.tiny is an interpolation of model.tiny: the typo is reported once, where it is written.
    with pytest.raises(ConfigError, match=r"^model\.tiny: TinyLlava takes no key hiden_size; valid: [^\n]*hidden_size"):
        check_target_arguments(cfg)


def test_a_misspelled_lora_key_is_one_config_error_naming_it():
    cfg, _ = compose_train(HF_VLM)
    with open_dict(cfg):
        cfg.model.lora.rank = 8
    with pytest.raises(ConfigError, match=r"^model\.lora: LoraAdapters takes no key rank; valid: alpha, dropout, r,"):
        check_target_arguments(cfg)


def test_a_misspelled_synthetic_key_is_a_config_error():
    cfg, _ = compose_train(["task=vqa"])
    with open_dict(cfg):
        cfg.data.synthetic.num_image = 10
    with pytest.raises(ConfigError, match=r"^data\.synthetic: SyntheticVQA takes no key num_image; valid: "):
        check_target_arguments(cfg)


def test_health_thresholds_are_the_alert_rules_keyword_arguments():
    assert VQAModule.alert_rule is health_alerts
    cfg, _ = compose_train(["task=vqa"])
    assert list(threshold_problems(cfg)) == []
    with open_dict(cfg):
        cfg.callbacks.health_monitor.thresholds.vqa = {"min_supervised_token": 1}
    assert list(threshold_problems(cfg)) == [
        "callbacks.health_monitor.thresholds.vqa: health_alerts takes no key min_supervised_token; "
        "valid: min_supervised_tokens",
        "callbacks.health_monitor.thresholds.vqa: health_alerts needs min_supervised_tokens",
    ]
