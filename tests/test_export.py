"""vigil-export: a LoRA fine-tune of the tiny Qwen2-VL leaves vigil as a PEFT folder and as a merged model, and
both generate exactly what the model generated inside vigil."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vigil.core.errors import ConfigError
from vigil.core.run import build_module
from vigil.export import export
from vigil.tasks.vqa.chat import ChatTemplateEncoder
from vigil.tasks.vqa.prompts import Turn
from vigil.train import CONF_DIR

LORA = "model.lora={r:4,alpha:8,dropout:0.0,target_modules:[q_proj,v_proj]}"
OVERRIDES = ["task=vqa", "model=tiny_qwen2_vl", LORA]


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        yield


@pytest.fixture
def fine_tuned(hydra_conf, synthetic_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A vigil checkpoint of the tiny Qwen2-VL with LoRA adapters far from their zero start, and its module."""
    monkeypatch.setenv("VIGIL_CACHE", str(synthetic_cache))
    module = build_module(compose(config_name="train", overrides=OVERRIDES))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    checkpoint = {"state_dict": module.state_dict(), "vigil": {"overrides": OVERRIDES}}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt", module.model.eval()


def greedy(model, prompt: dict, steps: int = 6) -> tuple[list[int], torch.Tensor]:
    """Greedy new tokens and the first step's logits."""
    with torch.no_grad():
        logits = model(**prompt).logits[:, -1]
        output = model.generate(**prompt, max_new_tokens=steps, do_sample=False, num_beams=1)
    return output[0, prompt["input_ids"].shape[1] :].tolist(), logits


def chat_prompt(folder: Path) -> dict:
    """A question about an image as the exported processor renders it (its chat template)."""
    processor = AutoProcessor.from_pretrained(folder)
    encoder = ChatTemplateEncoder(processor)
    image = Image.new("RGB", (64, 64), (200, 90, 90))
    encoding = encoder.encode(encoder.image_segment(image), [Turn("What color is the polyp?", "red", "color")], False)
    input_ids = torch.tensor([encoding.input_ids])
    modality = (input_ids == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).int()
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "mm_token_type_ids": modality} | (
        encoding.image_inputs
    )


def test_adapter_and_merged_exports_generate_what_vigil_generates(fine_tuned, tmp_path: Path):
    ckpt_path, vigil_model = fine_tuned
    assert export(ckpt_path, tmp_path / "adapter") == "PEFT adapter"
    assert export(ckpt_path, tmp_path / "merged", merge=True) == "merged model"
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"} <= {
        path.name for path in (tmp_path / "adapter").iterdir()
    }
    prompt = chat_prompt(tmp_path / "merged")
    expected, expected_logits = greedy(vigil_model.model, prompt)
    base_path = vigil_model.model.peft_config["default"].base_model_name_or_path
    base = AutoModelForImageTextToText.from_pretrained(base_path)
    _, base_logits = greedy(base, prompt)
    assert not torch.allclose(base_logits, expected_logits, atol=1e-3)  # the adapters matter
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    for exported in (adapted, merged):
        tokens, logits = greedy(exported, prompt)
        assert tokens == expected
        torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert type(merged).__name__ == "Qwen2VLForConditionalGeneration"
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_export_refuses_a_missing_checkpoint_and_a_used_folder(fine_tuned, tmp_path: Path):
    ckpt_path, _ = fine_tuned
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*missing.ckpt: no such checkpoint file$"):
        export(tmp_path / "missing.ckpt", tmp_path / "out")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "model.safetensors").write_text("")
    with pytest.raises(ConfigError, match=r"^out=.*used: the folder is not empty \(choose a new one\)$"):
        export(ckpt_path, tmp_path / "used")


@pytest.mark.slow
def test_vigil_export_from_the_command_line_after_a_lora_fine_tune(cli, tmp_path: Path):
    lora = ["task=vqa", "model=tiny_qwen2_vl", LORA, "data.synthetic.num_images=40", "data.batch_size=8"]
    steps = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    trained = cli(
        "train", "logger=csv", "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path / 'run'}", *lora, *steps
    )
    assert trained.returncode == 0, trained.output
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    exported = cli("export", f"ckpt_path={ckpt}", f"out={tmp_path / 'merged'}", "merge=true")
    assert exported.returncode == 0, exported.output
    assert f"merged model written to {tmp_path / 'merged'}" in exported.stdout
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "Qwen2VLForConditionalGeneration"
    assert AutoProcessor.from_pretrained(tmp_path / "merged").chat_template
