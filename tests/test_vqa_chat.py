"""Chat-template prompts on the tiny Qwen2-VL checkpoint: the processor's own rendering, a role for every token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_json
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLProcessor

from vigil.core.errors import ConfigError
from vigil.tasks.vqa.chat import ChatTemplateEncoder, prompt_encoder
from vigil.tasks.vqa.data import VQADataModule
from vigil.tasks.vqa.health import check_sample
from vigil.tasks.vqa.images import open_for_processor, processor_size
from vigil.tasks.vqa.masking import AnswerOnlyMasking, MultiTurnMasking
from vigil.tasks.vqa.model import load_processor
from vigil.tasks.vqa.prompts import SYSTEM_PROMPT, Encoding, PromptEncoder, Role, Turn
from vigil.tasks.vqa.records import VQARecord
from vigil.tasks.vqa.tiny_qwen2_vl import TinyQwen2VL, ensure_tiny_qwen2_vl_checkpoint

TURNS = (
    Turn("What color is the polyp?", "red", "color", ("red", "white")),
    Turn("How many polyps are in the image?", "2", "count_numeric"),
)
IMAGE = Image.new("RGB", (64, 64), (200, 90, 90))


@pytest.fixture(scope="module")
def processor(synthetic_cache: Path):
    return load_processor("tiny_qwen2_vl", synthetic_cache, None)


@pytest.fixture(scope="module")
def encoder(processor) -> ChatTemplateEncoder:
    chat = prompt_encoder(processor, "chat_template", show_candidates=True)
    assert isinstance(chat, ChatTemplateEncoder)
    return chat


def conversation(turns: tuple[Turn, ...], with_last_answer: bool) -> list[dict]:
    """The messages as a user of the processor writes them by hand (independent of the encoder)."""
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
    for index, turn in enumerate(turns):
        question = f"Question type: {turn.question_type}\nQuestion: {turn.question}"
        if turn.candidates:
            question += f"\nValid answers: {', '.join(turn.candidates)}"
        image = [{"type": "image"}] if index == 0 else []
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": question}]})
        if with_last_answer or index < len(turns) - 1:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    return messages


def test_tiny_qwen2_vl_is_written_once_and_loads_through_the_auto_classes(synthetic_cache: Path, processor):
    folder = ensure_tiny_qwen2_vl_checkpoint(synthetic_cache, TinyQwen2VL())
    written = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert ensure_tiny_qwen2_vl_checkpoint(synthetic_cache, TinyQwen2VL()) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == written
    reloaded = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(reloaded).__name__ == "Qwen2VLForConditionalGeneration"
    assert isinstance(AutoProcessor.from_pretrained(folder), Qwen2VLProcessor) and isinstance(
        processor, Qwen2VLProcessor
    )
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == reloaded.config.image_token_id
    assert tokenizer.eos_token == "<|im_end|>"
    text = processor.apply_chat_template(conversation(TURNS[:1], True), tokenize=False)
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Question type: color\nQuestion: What color is the polyp?\nValid answers: red, white<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
    )


@pytest.mark.parametrize("with_last_answer", [True, False])
def test_chat_encoding_is_the_processors_own_tokenisation_of_its_template(processor, encoder, with_last_answer):
    messages = conversation(TURNS, with_last_answer)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=not with_last_answer)
    expected = processor(text=[text], images=[IMAGE], return_tensors="pt")
    encoding = encoder.encode(encoder.image_segment(IMAGE), TURNS, final_answer=with_last_answer)
    assert encoding.input_ids == expected["input_ids"][0].tolist()
    assert encoding.image_inputs["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert [i for i, r in zip(encoding.input_ids, encoding.roles, strict=True) if r == Role.IMAGE] == [image_pad] * 16


def test_supervised_tokens_are_the_answers_and_the_end_of_turn_token_only(processor, encoder):
    encoding = encoder.encode(encoder.image_segment(IMAGE), TURNS)
    tokenizer = processor.tokenizer
    roles = torch.tensor(encoding.roles)
    ids = torch.tensor(encoding.input_ids)
    assert tokenizer.decode(ids[AnswerOnlyMasking()(roles)]) == "2<|im_end|>"
    assert tokenizer.decode(ids[MultiTurnMasking()(roles)]) == "red<|im_end|>2<|im_end|>"
    # The newline ChatML writes after <|im_end|> and the generation prompt before an answer are the template's.
    text_roles = [(tokenizer.decode([i]), Role(r)) for i, r in zip(encoding.input_ids, encoding.roles, strict=True)]
    assert text_roles[-3:] == [("2", Role.FINAL_ANSWER), ("<|im_end|>", Role.FINAL_ANSWER), ("\n", Role.PROMPT)]
    assert tokenizer.decode([i for i, r in zip(ids.tolist(), roles.tolist(), strict=True) if r == Role.SYSTEM]) == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
    )
    assert encoder.answer_format.token_ids(tokenizer, "red") == tokenizer("red<|im_end|>")["input_ids"]


def test_prompt_auto_is_the_chat_template_when_the_processor_has_one(synthetic_cache: Path, processor):
    assert isinstance(prompt_encoder(processor, "auto"), ChatTemplateEncoder)
    plain = prompt_encoder(processor, "plain")
    assert type(plain) is PromptEncoder
    llava = load_processor("tiny", synthetic_cache, None)
    assert type(prompt_encoder(llava, "auto")) is PromptEncoder
    with pytest.raises(ConfigError, match=r"^data.prompt=chat_template: the processor of .* has no chat template"):
        prompt_encoder(llava, "chat_template")
    with pytest.raises(ConfigError, match=r"^data.prompt=chatml is not a prompt; valid: auto, chat_template, plain$"):
        prompt_encoder(processor, "chatml")


def test_a_misspelled_prompt_is_refused_before_any_data_is_read(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^data.prompt=chatml is not a prompt; valid: auto, chat_template, plain$"):
        VQADataModule(root=str(tmp_path), cache_dir=str(tmp_path), checkpoint="tiny_qwen2_vl", prompt="chatml")
    assert list(tmp_path.iterdir()) == []


def test_a_template_without_an_end_of_turn_token_ends_answers_with_end_of_sequence(processor):
    # LLaVA-1.5's template style: the answer is followed by a space, no special token.
    template = (
        "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
        "{% endif %}{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image_pad|>\n"
        "{% else %}{{ content['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    llava_style = Qwen2VLProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=processor.video_processor,
        chat_template=template,
    )
    encoder = ChatTemplateEncoder(llava_style, system_prompt="")
    assert encoder.answer_format.prefix == " " and encoder.answer_format.end_id == processor.tokenizer.eos_token_id
    encoding = encoder.encode(encoder.image_segment(IMAGE), TURNS[:1])
    supervised = [i for i, r in zip(encoding.input_ids, encoding.roles, strict=True) if r == Role.FINAL_ANSWER]
    assert processor.tokenizer.decode(supervised) == " red<|im_end|>"


def test_a_template_that_rewrites_earlier_messages_is_one_config_error(processor):
    # Renders only the last message: the text of k messages is not a prefix of the text of k + 1.
    template = "{{ messages[-1]['role'] }}: {{ messages[-1]['content'][-1]['text'] }}<|im_end|>"
    rewriting = Qwen2VLProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=processor.video_processor,
        chat_template=template,
    )
    with pytest.raises(ConfigError, match=r"changes the text of earlier messages .* \(use data.prompt=plain\)$"):
        ChatTemplateEncoder(rewriting)


def test_the_audit_proves_chat_answers_end_with_the_end_of_turn_token(tmp_path: Path, encoder):
    record = VQARecord("r0", "0.png", tmp_path / "0.png", TURNS, tmp_path / "train.jsonl", "line 1")
    segment = encoder.image_segment(IMAGE)
    check = check_sample(record, encoder, segment, MultiTurnMasking(), max_length=512)
    assert check.mismatches == [] and check.supervised_prompt == 0
    assert check.supervised == 4  # "red<|im_end|>", "2<|im_end|>"
    # Roles one token late (the classic masking drift) supervise <|im_end|> and the newline: the audit says so.
    drifting = DriftingEncoder(encoder.processor, show_candidates=True)
    check = check_sample(record, drifting, segment, MultiTurnMasking(), max_length=512)
    assert check.mismatches[0] == "supervised tokens decode to '<|im_end|>\\n', the answer is 'red'"


class DriftingEncoder(ChatTemplateEncoder):
    """A broken encoder: every token gets the role of the token before it."""

    def encode(self, image, turns, final_answer=True):
        encoding = super().encode(image, turns, final_answer)
        return Encoding(encoding.input_ids, [int(Role.PROMPT), *encoding.roles[:-1]], encoding.image_inputs)


@pytest.mark.slow
def test_tiny_qwen2_vl_with_the_chat_template_passes_the_audit_and_overfits(cli, tmp_path: Path):
    args = ["task=vqa", "model=tiny_qwen2_vl", "data.synthetic.num_images=40", "data.batch_size=8"]
    result = cli(
        "train", "debug=overfit", "logger=csv", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}", *args
    )
    assert result.returncode == 0, result.output
    assert "sanity overfit passed" in result.output
    audit = read_json(tmp_path / "audit.json")
    assert audit["errors"] == [] and audit["splits"]["train"]["answer_mismatches"] == 0
    assert audit["splits"]["train"]["image_tokens_mean"] == 16


def test_qwen2_vl_images_decoded_at_the_processors_size_give_the_same_patch_grid(tmp_path: Path, processor):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (1280, 1024), (180, 60, 60)).save(path)
    prepared = open_for_processor(path, processor.image_processor)
    assert prepared.size == processor_size(processor.image_processor, (1280, 1024))
    assert prepared.width < 1280
    full = processor.image_processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")
    small = processor.image_processor(images=[prepared], return_tensors="pt")
    assert small["image_grid_thw"].tolist() == full["image_grid_thw"].tolist()
