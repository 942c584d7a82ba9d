"""Large-model options: gradient checkpointing changes memory, not gradients; QLoRA is one ConfigError line
where bitsandbytes cannot run (no CUDA, no package), never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from test_config import compose_train

from vigil.core.config import check_target_arguments, validate_config
from vigil.core.errors import ConfigError, exit_on_vigil_error
from vigil.tasks.vqa.chat import prompt_encoder
from vigil.tasks.vqa.data import VQACollate
from vigil.tasks.vqa.losses import TokenCrossEntropy
from vigil.tasks.vqa.masking import AnswerOnlyMasking, supervised_labels
from vigil.tasks.vqa.model import load_processor, vision_language_model
from vigil.tasks.vqa.prompts import Turn
from vigil.tasks.vqa.quantization import quantization_config

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
QLORA = [
    "task=vqa",
    "model=hf_vlm",
    "model.name_or_path=Qwen/Qwen2-VL-2B-Instruct",
    "model.gradient_checkpointing=true",
]


def gradients(model, batch) -> dict[str, torch.Tensor]:
    """The gradients of the answer-token loss on `batch`, by parameter name."""
    model.zero_grad()
    logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw)
    labels = supervised_labels(AnswerOnlyMasking(), batch.input_ids, batch.token_role)
    TokenCrossEntropy()(logits, labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(synthetic_cache: Path):
    encoder = prompt_encoder(load_processor("tiny_qwen2_vl", synthetic_cache, None))
    turns = [(Turn("Is there a polyp?", "yes", "yes_no"),), (Turn("What color is the polyp?", "red", "color"),)]
    samples = []
    for index, sample_turns in enumerate(turns):
        encoding = encoder.encode(encoder.image_segment(Image.new("RGB", (64, 64), (90 * index, 90, 90))), sample_turns)
        samples.append(
            {"input_ids": encoding.input_ids, "roles": encoding.roles, "image_inputs": encoding.image_inputs}
            | {"answer": "", "question_type": "", "candidates": (), "id": "", "question": "", "image": ""}
        )
    batch = VQACollate(encoder.tokenizer.pad_token_id, "right")(samples)
    plain = vision_language_model("tiny_qwen2_vl", cache_dir=str(synthetic_cache), lora=LORA)
    checkpointed = vision_language_model(
        "tiny_qwen2_vl", cache_dir=str(synthetic_cache), lora=LORA, gradient_checkpointing=True
    )
    assert checkpointed.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    # LoRA's B starts at zero, so A would get no gradient: give B values, and both models the same adapters.
    with torch.no_grad():
        for name, parameter in plain.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.01)
    checkpointed.load_state_dict(plain.state_dict())
    expected, found = gradients(plain, batch), gradients(checkpointed, batch)
    assert expected and sorted(found) == sorted(expected)
    for name, gradient in expected.items():
        torch.testing.assert_close(found[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


def test_qlora_options_compose_and_validate():
    for bits in ("4bit", "8bit"):
        cfg, choices = compose_train([*QLORA, f"model.quantization={bits}"])
        validate_config(cfg, choices)
        check_target_arguments(cfg)
        assert cfg.model.quantization == bits and cfg.model.gradient_checkpointing is True


@pytest.mark.parametrize(
    ("quantization", "has_lora", "message"),
    [
        ("4bit", True, r"^model\.quantization=4bit needs (the bitsandbytes package|a CUDA GPU)"),
        ("8bit", True, r"^model\.quantization=8bit needs (the bitsandbytes package|a CUDA GPU)"),
        ("4bit", False, r"^model\.quantization=4bit: quantized weights do not train; set model\.lora"),
        ("2bit", True, r"^model\.quantization=2bit is not a quantization; valid: 4bit, 8bit, null$"),
    ],
)
def test_quantization_that_cannot_run_here_is_one_config_error(quantization, has_lora, message):
    if torch.cuda.is_available() and has_lora and quantization != "2bit":
        pytest.skip("a CUDA GPU is present: quantization can run")
    with pytest.raises(ConfigError, match=message):
        quantization_config(quantization, has_lora)


def test_a_config_error_raised_inside_instantiate_is_one_line(capsys: pytest.CaptureFixture[str]):
    # Hydra wraps what a _target_ raises in an InstantiationException; the entry points still print one line.
    node = {"_target_": "vigil.tasks.vqa.quantization.quantization_config", "quantization": "2bit", "has_lora": True}
    with pytest.raises(SystemExit) as exit_code:
        exit_on_vigil_error(lambda: instantiate(node))()
    assert exit_code.value.code == 1
    assert (
        capsys.readouterr().err
        == "ConfigError: model.quantization=2bit is not a quantization; valid: 4bit, 8bit, null\n"
    )


@pytest.mark.slow
def test_qlora_without_cuda_stops_the_run_with_one_line(cli, tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: quantization can run")
    result = cli(
        "train",
        "task=vqa",
        "model=hf_vlm",
        "model.name_or_path=tiny_qwen2_vl",
        "model.quantization=4bit",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("ConfigError: model.quantization=4bit needs ")
