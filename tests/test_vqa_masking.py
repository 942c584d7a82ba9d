"""Prompt segments, label masking and the audit that proves the supervised tokens are the answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from vigil.core.errors import ConfigError
from vigil.core.files import RecordPolicy
from vigil.tasks.vqa import health
from vigil.tasks.vqa.health import audit_splits
from vigil.tasks.vqa.images import open_for_processor, processor_size
from vigil.tasks.vqa.masking import (
    IGNORE_INDEX,
    AnswerOnlyMasking,
    FullSequenceMasking,
    MultiTurnMasking,
    RoleMasking,
    supervised_labels,
)
from vigil.tasks.vqa.model import TinyLlava, load_processor
from vigil.tasks.vqa.prompts import SYSTEM_PROMPT, PromptEncoder, Role, Turn
from vigil.tasks.vqa.records import Catalog, VQARecord

TURNS = (
    Turn("Is there a polyp?", "yes", "yes_no", ("yes", "no")),
    Turn("What color is the polyp?", "red", "color", ("red", "white")),
)
# One image token per cell of the tiny vision tower's output grid, whatever the input image's size.
IMAGE_TOKENS = (TinyLlava.image_size // TinyLlava.vision_stride) ** 2


@pytest.fixture(scope="module")
def encoder(synthetic_cache: Path) -> PromptEncoder:
    return PromptEncoder(load_processor("tiny", synthetic_cache, None))


@pytest.fixture
def encoding(encoder: PromptEncoder):
    return encoder.encode(encoder.image_segment(Image.new("RGB", (80, 60))), TURNS)


def text_of(encoder: PromptEncoder, ids: list[int]) -> str:
    return encoder.tokenizer.decode(ids, skip_special_tokens=False)


def expected_template(final_answer: bool = True) -> str:
    """The template written out by hand, image tokens left out."""
    return (
        f"<s>System: {SYSTEM_PROMPT}\nUser: \nQuestion type: yes_no\nQuestion: Is there a polyp?\n"
        "Valid answers: yes, no\nAssistant: Answer: yes</s>\nUser: \nQuestion type: color\n"
        "Question: What color is the polyp?\nValid answers: red, white\nAssistant: Answer:"
    ) + (" red</s>" if final_answer else "")


def test_segments_concatenate_to_the_template_with_the_image_expanded(encoder, encoding):
    roles = torch.tensor(encoding.roles)
    ids = torch.tensor(encoding.input_ids)
    image_token = encoder.tokenizer.convert_tokens_to_ids("<image>")
    assert int((roles == Role.IMAGE).sum()) == IMAGE_TOKENS
    assert (ids[roles == Role.IMAGE] == image_token).all()
    assert text_of(encoder, ids[roles != Role.IMAGE].tolist()) == expected_template()
    assert encoding.image_inputs["pixel_values"].shape == (1, 3, TinyLlava.image_size, TinyLlava.image_size)


def test_an_empty_system_prompt_writes_no_system_line(synthetic_cache: Path):
    bare = PromptEncoder(load_processor("tiny", synthetic_cache, None), system_prompt="")
    encoding = bare.encode(bare.image_segment(Image.new("RGB", (80, 60))), TURNS)
    ids = torch.tensor(encoding.input_ids)
    text = text_of(bare, ids[torch.tensor(encoding.roles) != Role.IMAGE].tolist())
    assert text == expected_template().replace(f"System: {SYSTEM_PROMPT}\n", "")
    assert Role.SYSTEM not in encoding.roles[1:]


def test_answer_segments_are_tokenised_on_their_own_and_end_with_eos(encoder, encoding):
    roles, ids = encoding.roles, encoding.input_ids
    tokenizer = encoder.tokenizer
    final = [token for token, role in zip(ids, roles, strict=True) if role == Role.FINAL_ANSWER]
    earlier = [token for token, role in zip(ids, roles, strict=True) if role == Role.ANSWER]
    assert final == [*tokenizer(" red", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert earlier == [*tokenizer(" yes", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def test_generation_prompt_ends_at_the_asked_turns_answer_colon(encoder, encoding):
    prompt = encoder.encode(encoder.image_segment(Image.new("RGB", (80, 60))), TURNS, final_answer=False)
    assert Role.FINAL_ANSWER not in prompt.roles
    assert prompt.input_ids == encoding.input_ids[: len(prompt.input_ids)]
    roles = torch.tensor(prompt.roles)
    assert text_of(encoder, torch.tensor(prompt.input_ids)[roles != Role.IMAGE].tolist()) == expected_template(False)


@pytest.mark.parametrize(
    ("masking", "supervised_text"),
    [
        (AnswerOnlyMasking(), " red</s>"),
        (MultiTurnMasking(), " yes</s> red</s>"),
        (FullSequenceMasking(), expected_template()),
    ],
)
def test_masking_supervises_exactly_its_roles(encoder, encoding, masking, supervised_text):
    ids = torch.tensor([encoding.input_ids, encoding.input_ids[:-5] + [0] * 5])
    roles = torch.tensor([encoding.roles, encoding.roles[:-5] + [int(Role.PADDING)] * 5])
    labels = supervised_labels(masking, ids, roles)
    assert text_of(encoder, labels[0][labels[0] != IGNORE_INDEX].tolist()) == supervised_text
    # Image tokens and padding are never supervised, whatever the strategy.
    assert (labels[roles == Role.IMAGE] == IGNORE_INDEX).all()
    assert (labels[roles == Role.PADDING] == IGNORE_INDEX).all()


class ShiftedByOne(AnswerOnlyMasking):
    """The classic bug: the answer mask one token late (the last prompt token in, the end-of-sequence out)."""

    def __call__(self, token_role: torch.Tensor) -> torch.Tensor:
        mask = super().__call__(token_role)
        return torch.cat([mask[1:], mask[:1]])


class NothingSupervised(RoleMasking):
    roles = ()


def catalog_of(tmp_path: Path, turns_per_record: list[tuple[Turn, ...]]) -> Catalog:
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    records = [
        VQARecord(f"r{n}", "a.png", image, turns, tmp_path / "train.jsonl", f"line {n + 1}")
        for n, turns in enumerate(turns_per_record)
    ]
    return Catalog(tmp_path, {"train": records, "val": records[:1], "test": []}, RecordPolicy())


def test_audit_proves_the_supervised_tokens_are_the_answers(tmp_path: Path, encoder):
    report = audit_splits(catalog_of(tmp_path, [TURNS, TURNS[:1]]), encoder, AnswerOnlyMasking(), max_length=256)
    assert report.errors == [] and report.warnings == []
    train = report.splits["train"]
    assert train["samples"] == 2 and train["questions"] == 3 and train["conversations"] == 1
    assert train["questions_per_type"] == {"color": 1, "yes_no": 2}
    # " red</s>" and " yes</s>": each answer is one token plus end-of-sequence.
    assert train["supervised_tokens_mean"] == 2.0
    single = encoder.encode(encoder.image_segment(Image.new("RGB", (64, 64))), TURNS[:1])
    assert train["supervised_fraction_by_type"]["yes_no"] == pytest.approx(2 / len(single.input_ids))
    assert train["image_tokens_mean"] == IMAGE_TOKENS


def test_audit_refuses_answers_cut_by_max_length(tmp_path: Path, encoder):
    # One token short: only the end-of-sequence token of the conversation's last answer is cut.
    length = len(encoder.encode(encoder.image_segment(Image.new("RGB", (64, 64))), TURNS).input_ids)
    report = audit_splits(catalog_of(tmp_path, [TURNS, TURNS[:1]]), encoder, AnswerOnlyMasking(), max_length=length - 1)
    assert report.splits["train"]["answers_cut"] == 1 and report.splits["train"]["truncated"] == 1
    (error,) = report.errors
    assert error.startswith("train: 1 samples have their final answer cut by data.max_length (train.jsonl:line 1)")
    assert error.endswith(f"(raise data.max_length={length - 1} to at least {length})")


def test_audit_refuses_a_mask_off_by_one(tmp_path: Path, encoder):
    report = audit_splits(catalog_of(tmp_path, [TURNS]), encoder, ShiftedByOne(), max_length=256)
    assert any(
        "samples have supervised tokens that are not their answer (train.jsonl:line 1: " in e for e in report.errors
    )
    assert any("samples have supervised prompt tokens" in e for e in report.errors)


def test_audit_refuses_samples_without_supervised_tokens(tmp_path: Path, encoder):
    report = audit_splits(catalog_of(tmp_path, [TURNS]), encoder, NothingSupervised(), max_length=256)
    assert report.errors == [
        "train: 1 samples have no supervised token (train.jsonl:line 1) (check the masking and the records' answers)"
    ]


def test_audit_warns_that_full_sequence_trains_the_prompt(tmp_path: Path, encoder):
    report = audit_splits(catalog_of(tmp_path, [TURNS]), encoder, FullSequenceMasking(), max_length=256)
    assert report.errors == []
    (warning,) = report.warnings
    assert warning.startswith("train: masking=FullSequenceMasking trains the prompt: ")
    assert report.splits["train"]["supervised_fraction_mean"] > 0.5


# --- real size: prompts that do not grow with the data, an audit that reads each image once ----------------


def test_a_type_with_more_candidates_than_listed_is_not_written_into_its_prompts(encoder):
    image = encoder.image_segment(Image.new("RGB", (64, 64)))
    many = tuple(f"colour {n}" for n in range(300))
    bare = encoder.encode(image, [Turn("What color is it?", "colour 7", "color")])
    unlisted = encoder.encode(image, [Turn("What color is it?", "colour 7", "color", many)])
    listed = encoder.encode(image, [Turn("What color is it?", "colour 7", "color", many[:3])])
    assert unlisted.input_ids == bare.input_ids
    assert "Valid answers: colour 0, colour 1, colour 2" in text_of(encoder, listed.input_ids)


def test_the_audit_says_which_types_candidates_are_not_listed(tmp_path: Path, encoder):
    catalog = catalog_of(tmp_path, [TURNS])
    catalog.candidates = {"color": tuple(f"c{n}" for n in range(40)), "yes_no": ("yes", "no")}
    report = audit_splits(catalog, encoder, AnswerOnlyMasking(), max_length=256)
    assert report.errors == []
    assert report.splits["train"]["candidates_not_listed"] == {"color": 40}
    (warning,) = report.warnings
    assert warning.startswith("train: the candidates of color (40) are not listed in the prompts")


def test_the_audit_reads_each_images_size_once(tmp_path: Path, encoder, monkeypatch):
    read = []
    monkeypatch.setattr(health, "image_size", lambda path, record=None: read.append(path) or (64, 64))
    report = audit_splits(catalog_of(tmp_path, [TURNS] * 9), encoder, AnswerOnlyMasking(), max_length=256)
    assert report.splits["train"]["samples"] == 9
    assert read == [tmp_path / "a.png"]


class CountingTokenizer:
    """The tokenizer, counting the texts it is asked to tokenise."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def test_texts_seen_before_are_not_tokenised_again(synthetic_cache: Path):
    fresh = PromptEncoder(load_processor("tiny", synthetic_cache, None))
    image = fresh.image_segment(Image.new("RGB", (64, 64)))
    first = fresh.encode(image, TURNS)
    counting = fresh.tokenizer = CountingTokenizer(fresh.tokenizer)
    again = fresh.encode(image, TURNS)
    assert again == first and counting.calls == 0


def processor_call(processor, image: Image.Image) -> tuple[list[int], dict[str, torch.Tensor]]:
    """The image segment straight from the processor's own call (independent of the encoder)."""
    output = processor(text=[processor.image_token], images=[image], add_special_tokens=False, return_tensors="pt")
    return output["input_ids"][0].tolist(), {k: v for k, v in output.items() if k in ("pixel_values", "image_grid_thw")}


@pytest.mark.parametrize("checkpoint", ["tiny", "tiny_qwen2_vl"])
def test_image_segments_after_the_first_of_a_size_are_the_processors_own(synthetic_cache: Path, checkpoint: str):
    processor = load_processor(checkpoint, synthetic_cache, None)
    fresh = PromptEncoder(processor)
    images = [Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)) for i, size in enumerate([(64, 64), (80, 60)] * 3)]
    for image in images:
        ids, tensors = fresh.image_segment(image)
        expected_ids, expected = processor_call(processor, image)
        assert ids == expected_ids
        assert tensors.keys() == expected.keys()
        assert all(torch.equal(tensors[key], expected[key]) for key in expected)
    assert fresh.image_processor_alone is True


def test_a_row_separator_ends_each_row_of_the_image_tokens_and_the_model_gets_them_all(synthetic_cache: Path):
    processor = load_processor("tiny", synthetic_cache, None)
    separated = PromptEncoder(processor, image_row_separator="\n")
    ids, _ = separated.image_segment(Image.new("RGB", (64, 64)))
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    newline = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]
    side = TinyLlava.image_size // TinyLlava.vision_stride
    assert ids == ([image_token] * side + newline) * side
    encoding = separated.encode((ids, {}), TURNS)
    assert encoding.input_ids.count(image_token) == IMAGE_TOKENS
    unseparated = PromptEncoder(processor)
    plain = unseparated.encode(unseparated.image_segment(Image.new("RGB", (64, 64))), TURNS)
    assert len(encoding.input_ids) == len(plain.input_ids) + side * len(newline)


def test_a_row_separator_is_refused_where_image_positions_come_from_the_grid(synthetic_cache: Path):
    separated = PromptEncoder(load_processor("tiny_qwen2_vl", synthetic_cache, None), image_row_separator="\n")
    with pytest.raises(ConfigError, match=r"image_grid_thw\); set data.image_row_separator=null"):
        separated.image_segment(Image.new("RGB", (64, 64)))


class DoublingProcessor:
    """A processor whose call changes what its image processor returns."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, *args, **kwargs):
        output = self.processor(*args, **kwargs)
        output["pixel_values"] = output["pixel_values"] * 2
        return output

    def __getattr__(self, name: str):
        return getattr(self.processor, name)


def test_a_processor_whose_call_differs_from_its_image_processor_is_always_called(synthetic_cache: Path):
    doubling = DoublingProcessor(load_processor("tiny", synthetic_cache, None))
    fresh = PromptEncoder(doubling)
    for shade in (10, 120, 250):
        image = Image.new("RGB", (64, 64), (shade, 90, 90))
        assert torch.equal(
            fresh.image_segment(image)[1]["pixel_values"], processor_call(doubling, image)[1]["pixel_values"]
        )
    assert fresh.image_processor_alone is False


def test_the_loader_decodes_at_the_processors_size_with_the_same_input_shape(tmp_path: Path, encoder):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (720, 576), (180, 60, 60)).save(path)
    image_processor = encoder.processor.image_processor
    assert processor_size(image_processor, (720, 576)) == (120, 96)
    prepared = open_for_processor(path, image_processor)
    assert prepared.size == (120, 96)
    full = encoder.image_segment(Image.open(path).convert("RGB"))
    small = encoder.image_segment(prepared)
    assert small[0] == full[0]
    assert small[1]["pixel_values"].shape == full[1]["pixel_values"].shape
    assert torch.allclose(small[1]["pixel_values"], full[1]["pixel_values"], atol=0.05)
