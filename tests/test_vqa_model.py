"""The VQA model and module: tiny checkpoint round trip, named inputs only, LoRA, the token loss, health."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaProcessor, get_cosine_schedule_with_warmup

from vigil.core.batch import check_forward_accepts, fields_with_role, meta
from vigil.core.errors import ConfigError
from vigil.core.preflight import configured_optimizer
from vigil.tasks.vqa.data import VQACollate
from vigil.tasks.vqa.health import health_alerts, health_stats
from vigil.tasks.vqa.losses import TokenCrossEntropy, predicting_positions
from vigil.tasks.vqa.masking import IGNORE_INDEX, AnswerOnlyMasking, MultiTurnMasking, supervised_labels
from vigil.tasks.vqa.model import TinyLlava, ensure_tiny_checkpoint, vision_language_model
from vigil.tasks.vqa.module import VQAModule
from vigil.tasks.vqa.prompts import PromptEncoder, Turn
from vigil.tasks.vqa.records import VQABatch

TURNS = [
    (Turn("Is there a polyp?", "yes", "yes_no", ("yes", "no")),),
    (
        Turn("What color is the polyp?", "red", "color", ("red", "white")),
        Turn("How many polyps?", "2", "count_numeric"),
    ),
]


@pytest.fixture(scope="module")
def model(synthetic_cache: Path):
    return vision_language_model("tiny", cache_dir=str(synthetic_cache))


def training_batch(model) -> VQABatch:
    encoder = PromptEncoder(AutoProcessor.from_pretrained(model.model.name_or_path))
    samples = []
    for index, turns in enumerate(TURNS):
        encoding = encoder.encode(encoder.image_segment(Image.new("RGB", (64, 64), (40 * index, 90, 90))), turns)
        samples.append(
            {
                "input_ids": encoding.input_ids,
                "roles": encoding.roles,
                "image_inputs": encoding.image_inputs,
                "answer": turns[-1].answer,
                "question_type": turns[-1].question_type,
                "candidates": turns[-1].candidates,
                "id": f"r{index}",
                "question": turns[-1].question,
                "image": f"{index}.png",
            }
        )
    return VQACollate(encoder.tokenizer.pad_token_id, "right")(samples)


@dataclasses.dataclass
class BatchWithRecordFields(VQABatch):
    """A batch that also carries what a real record has around it: none of it may reach the model."""

    source: list[str] = meta(default_factory=list)
    img_id: list[str] = meta(default_factory=list)
    labels_text: list[str] = meta(default_factory=list)


def test_tiny_checkpoint_is_written_once_and_loaded_through_the_auto_classes(synthetic_cache: Path, model):
    folder = ensure_tiny_checkpoint(synthetic_cache, TinyLlava())
    assert Path(model.model.name_or_path) == folder
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(written)
    assert ensure_tiny_checkpoint(synthetic_cache, TinyLlava()) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written
    processor = AutoProcessor.from_pretrained(folder)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(processor, LlavaProcessor) and type(reloaded).__name__ == "FastVlmForConditionalGeneration"
    assert type(reloaded.model.vision_tower).__name__ == "TimmWrapperModel"
    # The deep stem ends at twice its width (timm's plain stem would be 64 channels wide).
    assert reloaded.model.vision_tower.timm_model.layer1[0].conv1.in_channels == 2 * TinyLlava().vision_stem_width
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == reloaded.config.image_token_id
    for name, value in reloaded.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], value), name


def test_model_forward_takes_the_batch_inputs_by_name():
    assert fields_with_role(VQABatch, "input") == ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_hands_the_hf_model_only_its_inputs(model, monkeypatch: pytest.MonkeyPatch):
    check_forward_accepts(model, BatchWithRecordFields)
    calls = []
    forward = model.model.forward

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", spy)
    fields = {f.name: getattr(training_batch(model), f.name) for f in dataclasses.fields(VQABatch)}
    batch = BatchWithRecordFields(**fields, source=["hyperkvasir"] * 2, img_id=["a", "b"], labels_text=["x", "y"])
    module = VQAModule(model, TokenCrossEntropy(), AnswerOnlyMasking(), partial(torch.optim.AdamW, lr=1e-3))
    output = module.training_step(batch, 0)
    ((args, kwargs),) = calls
    # Besides the batch's inputs, only which logits the loss reads.
    assert args == () and set(kwargs) == {"input_ids", "attention_mask", "pixel_values", "logits_to_keep"}
    assert kwargs["input_ids"] is batch.input_ids and kwargs["pixel_values"] is batch.pixel_values
    assert kwargs["logits_to_keep"].dtype == torch.bool and kwargs["logits_to_keep"].shape == batch.input_ids.shape
    assert torch.isfinite(output["loss"])


def test_token_loss_matches_a_token_by_token_reference(model):
    batch = training_batch(model)
    labels = supervised_labels(MultiTurnMasking(), batch.input_ids, batch.token_role)
    logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    terms = []
    for row in range(labels.shape[0]):
        for position in range(1, labels.shape[1]):
            if labels[row, position] != IGNORE_INDEX:
                log_probs = F.log_softmax(logits[row, position - 1].double(), dim=-1)
                terms.append(-log_probs[labels[row, position]])
    assert len(terms) == 6  # " yes</s>", " red</s>", " 2</s>": one token and end-of-sequence each
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(TokenCrossEntropy()(logits, labels).double(), expected, rtol=1e-5, atol=1e-6)


def test_logits_of_the_predicting_positions_alone_give_the_full_loss_and_its_gradients(model):
    batch = training_batch(model)
    labels = supervised_labels(MultiTurnMasking(), batch.input_ids, batch.token_role)
    positions = predicting_positions(labels)
    assert positions.sum() == 6 and not positions[:, -1].any()
    losses, gradients = [], []
    for logits_at in (None, positions):
        model.zero_grad()
        logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values, logits_at=logits_at)
        loss = TokenCrossEntropy()(logits, labels)
        loss.backward()
        losses.append(loss.detach())
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    full, kept = model(batch.input_ids, batch.attention_mask, batch.pixel_values), logits.detach()
    torch.testing.assert_close(kept, full[positions].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        # The two graphs sum the same terms in another order: rounding, on the scale of each gradient.
        scale = float(gradient.abs().max())
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-3, atol=1e-4 * scale + 1e-12, msg=name)
    with pytest.raises(ValueError, match="6 supervised tokens"):
        TokenCrossEntropy()(kept[:5], labels)


def test_batch_without_supervised_tokens_gives_zero_loss_and_an_alert(model):
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = TokenCrossEntropy()(logits, torch.full((2, 5), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    alerts = health_alerts({"supervised_tokens": 0.0, "supervised_fraction": 0.0}, min_supervised_tokens=1)
    assert "check the label masking" in alerts["no_supervised_tokens"]
    assert health_alerts({"supervised_tokens": 4.0, "supervised_fraction": 0.1}, min_supervised_tokens=1) == {}


def test_health_stats_count_the_tokens_the_shifted_loss_supervises(model):
    batch = training_batch(model)
    labels = supervised_labels(MultiTurnMasking(), batch.input_ids, batch.token_role)
    stats = health_stats(MultiTurnMasking(), batch.token_role, batch.attention_mask)
    assert stats["supervised_tokens"] == float((labels[:, 1:] != IGNORE_INDEX).sum()) == 6.0
    assert stats["supervised_fraction"] == pytest.approx(6.0 / float(batch.attention_mask.sum()))


def test_every_trainable_parameter_gets_a_gradient(model):
    batch = training_batch(model)
    model.zero_grad()
    logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values)
    TokenCrossEntropy()(logits, supervised_labels(AnswerOnlyMasking(), batch.input_ids, batch.token_role)).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.zero_grad()


def test_lora_trains_only_the_adapters_and_checkpoints_only_them(synthetic_cache: Path):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    adapted = vision_language_model("tiny", cache_dir=str(synthetic_cache), lora=lora, freeze_vision_tower=True)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any("language_model" in name for name in trainable)
    module = VQAModule(adapted, TokenCrossEntropy(), AnswerOnlyMasking(), partial(torch.optim.AdamW, lr=1e-3))
    (group,) = module.configure_optimizers().param_groups
    assert len(group["params"]) == len(trainable)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    # Buffers stay: the vision tower's batch-norm statistics change in training even when its weights are frozen.
    parameters = dict(adapted.named_parameters())
    buffers = [name for name in adapted.state_dict() if name not in parameters]
    assert buffers and sorted(checkpoint["state_dict"]) == sorted(f"model.{name}" for name in trainable + buffers)
    assert module.strict_loading is False


def test_freeze_vision_tower_freezes_the_vision_encoder_only(synthetic_cache: Path):
    frozen = vision_language_model("tiny", cache_dir=str(synthetic_cache), freeze_vision_tower=True)
    for name, parameter in frozen.named_parameters():
        assert parameter.requires_grad == ("vision_tower" not in name), name


def test_attention_kernel_is_chosen_per_sub_model_and_gives_the_same_loss(synthetic_cache: Path, model):
    chosen = {"text_config": "eager"}
    sdpa, eager = (
        vision_language_model("tiny", cache_dir=str(synthetic_cache), attn_implementation=kernel).eval()
        for kernel in (None, OmegaConf.create(chosen))
    )
    assert eager.model.config.text_config._attn_implementation == "eager"
    assert sdpa.model.config.text_config._attn_implementation == "sdpa"
    assert eager.model.config.vision_config._attn_implementation == sdpa.model.config.vision_config._attn_implementation
    batch = training_batch(model)
    labels = supervised_labels(MultiTurnMasking(), batch.input_ids, batch.token_role)
    with torch.no_grad():
        losses = [
            TokenCrossEntropy()(vlm(batch.input_ids, batch.attention_mask, batch.pixel_values), labels)
            for vlm in (sdpa, eager)
        ]
    assert torch.allclose(losses[0], losses[1], atol=1e-5)


def test_row_separators_are_refused_for_a_model_whose_image_positions_come_from_the_grid(synthetic_cache: Path):
    with pytest.raises(ConfigError, match=r"tiny_qwen2_vl takes its image tokens' positions from their grid"):
        vision_language_model("tiny_qwen2_vl", cache_dir=str(synthetic_cache), image_row_separator="\n")
    assert vision_language_model("tiny", cache_dir=str(synthetic_cache), image_row_separator="\n")


def test_a_qwen2_vl_checkpoint_trains_with_lora_and_decodes_through_the_same_path(synthetic_cache: Path):
    from vigil.tasks.vqa.decoding import Decoder
    from vigil.tasks.vqa.model import load_processor

    name = "tiny_qwen2_vl"
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    model = vision_language_model(name, cache_dir=str(synthetic_cache), lora=lora, freeze_vision_tower=True)
    encoder = PromptEncoder(load_processor(name, synthetic_cache, None), "<|vision_start|><|image_pad|><|vision_end|>")
    turns = [TURNS[0], (Turn("What is the size of the polyp?", "5-10mm", "size_numeric", ("<5mm", "5-10mm")),)]
    images = [Image.new("RGB", (64, 64), (200, 90, 90)), Image.new("RGB", (90, 60), (90, 90, 200))]

    def samples(final_answer: bool) -> list[dict]:
        encodings = [
            encoder.encode(encoder.image_segment(i), t, final_answer) for i, t in zip(images, turns, strict=True)
        ]
        return [
            {"input_ids": e.input_ids, "roles": e.roles, "image_inputs": e.image_inputs, "answer": t[-1].answer}
            | {
                "question_type": t[-1].question_type,
                "candidates": t[-1].candidates,
                "id": "",
                "question": "",
                "image": "",
            }
            for e, t in zip(encodings, turns, strict=True)
        ]

    batch = VQACollate(encoder.tokenizer.pad_token_id, "right")(samples(True))
    # Images of different sizes: a different number of patches each, told apart by the grid (8-pixel patches;
    # 90 x 60 is resized to 64 x 48 to stay within the processor's 64 x 64 pixels).
    assert batch.image_grid_thw.tolist() == [[1, 8, 8], [1, 6, 8]]
    assert batch.pixel_values.shape[0] == 64 + 48
    logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw)
    TokenCrossEntropy()(logits, supervised_labels(AnswerOnlyMasking(), batch.input_ids, batch.token_role)).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    prompts = VQACollate(encoder.tokenizer.pad_token_id, "left")(samples(False))
    model.eval()
    for decoding in ("constrained", "rank"):
        answers = Decoder(decoding, max_new_tokens=4)(model, prompts)
        assert all(a in c for a, c in zip(answers, prompts.candidates, strict=True)), (decoding, answers)


def test_a_whole_run_schedule_is_told_the_run_length_and_steps_with_every_optimizer_step(model):
    cosine = partial(get_cosine_schedule_with_warmup, num_warmup_steps=2)
    module = VQAModule(model, TokenCrossEntropy(), MultiTurnMasking(), partial(torch.optim.AdamW, lr=1e-3), cosine)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    configured = module.configure_optimizers()
    schedule = configured["lr_scheduler"]
    assert schedule["interval"] == "step"
    lr_at = schedule["scheduler"].lr_lambdas[0]
    assert [lr_at(step) for step in (0, 2, 10)] == pytest.approx([0.0, 1.0, 0.0])


def test_the_vision_tower_trains_at_a_fraction_of_the_learning_rate_under_the_same_schedule(
    model, synthetic_cache: Path
):
    cosine = partial(get_cosine_schedule_with_warmup, num_warmup_steps=2)
    optimizer = partial(torch.optim.AdamW, lr=1e-3)
    module = VQAModule(model, TokenCrossEntropy(), MultiTurnMasking(), optimizer, cosine, vision_tower_lr_scale=0.1)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    configured = module.configure_optimizers()
    rest, tower = configured["optimizer"].param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert tower["params"] and all("vision_tower" in names[id(p)] for p in tower["params"])
    assert rest["params"] and not any("vision_tower" in names[id(p)] for p in rest["params"])
    assert len(rest["params"]) + len(tower["params"]) == len([p for p in module.parameters() if p.requires_grad])
    schedule = configured["lr_scheduler"]["scheduler"]
    for _ in range(6):
        schedule.step()
    factor = schedule.lr_lambdas[0](6)
    assert 0 < factor < 1
    assert [group["lr"] for group in (rest, tower)] == pytest.approx([1e-3 * factor, 1e-4 * factor])
    # The preflight's optimizer is built the same way; a frozen tower leaves one group.
    assert [group["lr"] for group in configured_optimizer(module).param_groups] == pytest.approx([1e-3, 1e-4])
    frozen = VQAModule(
        vision_language_model("tiny", cache_dir=str(synthetic_cache), freeze_vision_tower=True),
        TokenCrossEntropy(),
        MultiTurnMasking(),
        optimizer,
        vision_tower_lr_scale=0.1,
    )
    assert [group["lr"] for group in frozen.build_optimizer().param_groups] == pytest.approx([1e-3])
