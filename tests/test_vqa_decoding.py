"""Decoding: the candidate trie, constrained generation that only spells candidates, ranking by log-likelihood."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor

from vigil.core.batch import fields_with_role
from vigil.tasks.vqa.data import VQACollate
from vigil.tasks.vqa.decoding import AnswerTrie, Decoder, image_rows, select_rows
from vigil.tasks.vqa.model import vision_language_model
from vigil.tasks.vqa.prompts import PromptEncoder, Turn, answer_token_ids
from vigil.tasks.vqa.records import VQABatch

QUESTIONS = [
    Turn("What is the size of the polyp?", "5-10mm", "size_numeric", ("<5mm", "5-10mm", "11-20mm", ">20mm", "8mm")),
    Turn("Which instrument is used?", "polyp snare", "mcq", ("biopsy forceps", "polyp snare")),
    Turn("Is there a polyp?", "yes", "yes_no", ("yes", "no")),
    Turn("What type of procedure is the image taken from?", "colonoscopy", "open_ended"),
]


@pytest.fixture(scope="module")
def model(synthetic_cache: Path):
    return vision_language_model("tiny", cache_dir=str(synthetic_cache)).eval()


@pytest.fixture(scope="module")
def batch(model) -> VQABatch:
    encoder = PromptEncoder(AutoProcessor.from_pretrained(model.model.name_or_path))
    samples = []
    for index, turn in enumerate(QUESTIONS):
        image = Image.new("RGB", (64, 64), (60 * index, 100, 140))
        encoding = encoder.encode(encoder.image_segment(image), [turn], final_answer=False)
        samples.append(
            {
                "input_ids": encoding.input_ids,
                "roles": encoding.roles,
                "image_inputs": encoding.image_inputs,
                "answer": turn.answer,
                "question_type": turn.question_type,
                "candidates": turn.candidates,
                "id": str(index),
                "question": turn.question,
                "image": f"{index}.png",
            }
        )
    return VQACollate(encoder.tokenizer.pad_token_id, "left")(samples)


def test_trie_allows_exactly_the_continuations_of_a_prefix():
    sequences = [[5, 6, 2], [5, 7, 2], [8, 2], [5, 6, 9, 2]]
    trie = AnswerTrie(sequences)
    for prefix in ([], [5], [5, 6], [5, 6, 9], [8], [8, 2], [9], [5, 9]):
        expected = {s[len(prefix)] for s in sequences if s[: len(prefix)] == prefix and len(s) > len(prefix)}
        assert set(trie.allowed(prefix)) == expected, prefix
    assert trie.depth == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_answers_are_always_candidates_and_open_ones_free(model, batch, seed: int):
    # Random output layers: whatever the model prefers, constrained decoding can only spell a candidate.
    torch.manual_seed(seed)
    with torch.no_grad():
        model.model.lm_head.weight.normal_(0, 1)
    answers = Decoder("constrained", max_new_tokens=3)(model, batch)
    for answer, candidates in zip(answers[:3], batch.candidates[:3], strict=True):
        assert answer in candidates
    free = Decoder("free", max_new_tokens=3)(model, batch)
    assert all(isinstance(answer, str) for answer in free)


def test_rank_picks_the_candidate_with_the_best_mean_log_likelihood(model, batch):
    tokenizer = model.tokenizer
    answers = Decoder("rank")(model, batch)
    for row in range(3):
        prompt = batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        scores = []
        for candidate in batch.candidates[row]:
            tokens = answer_token_ids(tokenizer, candidate)
            ids = torch.tensor([prompt + tokens])
            with torch.no_grad():
                logits = model(ids, torch.ones_like(ids), batch.pixel_values[row : row + 1])
            log_probs = F.log_softmax(logits[0].double(), dim=-1)
            scores.append(sum(log_probs[len(prompt) - 1 + i, t] for i, t in enumerate(tokens)) / len(tokens))
        assert answers[row] == batch.candidates[row][int(torch.stack(scores).argmax())]


def test_image_rows_follow_qwen2_vl_patch_grids():
    grid = torch.tensor([[1, 2, 2], [1, 2, 3], [1, 1, 2]])
    pixel_values = torch.arange(12.0)[:, None].repeat(1, 3)
    chosen, chosen_grid = image_rows(pixel_values, grid, [1, 1, 0])
    assert chosen[:, 0].tolist() == [4, 5, 6, 7, 8, 9, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3]
    assert chosen_grid.tolist() == [[1, 2, 3], [1, 2, 3], [1, 2, 2]]
    images, none = image_rows(torch.arange(3.0)[:, None, None, None], None, [2, 0])
    assert images.flatten().tolist() == [2.0, 0.0] and none is None


@pytest.mark.parametrize("decoding", ["constrained", "rank"])
def test_decoding_calls_the_model_with_the_batchs_declared_inputs_only(model, batch, decoding, monkeypatch):
    calls = []
    for method in ("generate", "tail_logits"):
        original = getattr(model, method)

        def spy(*args, _original=original, _method=method, **kwargs):
            calls.append((_method, args, set(kwargs)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(model, method, spy)
    Decoder(decoding, max_new_tokens=2)(model, batch)
    inputs = set(fields_with_role(VQABatch, "input"))
    assert calls and all(args == () for _, args, _ in calls)
    assert {method: names - inputs for method, _, names in calls} == (
        {"generate": {"max_new_tokens", "prefix_allowed_tokens_fn", "end_token_id"}, "tail_logits": {"last"}}
        if decoding == "rank"
        else {"generate": {"max_new_tokens", "prefix_allowed_tokens_fn", "end_token_id"}}
    )
    assert all(names >= inputs for _, _, names in calls)


def test_select_rows_takes_token_rows_and_their_images(batch):
    selected = select_rows(batch.model_inputs(), [2, 0])
    assert set(selected) == set(batch.model_inputs())
    assert torch.equal(selected["input_ids"], batch.input_ids[[2, 0]])
    assert torch.equal(selected["pixel_values"], batch.pixel_values[[2, 0]])


def test_a_batch_answers_each_question_as_it_is_answered_alone(model, batch):
    # The open question shares the generate call with candidates deeper than its own token budget.
    torch.manual_seed(3)
    with torch.no_grad():
        model.model.lm_head.weight.normal_(0, 1)
    decoder = Decoder("constrained", max_new_tokens=2)
    together = decoder(model, batch)
    alone = [decoder(model, select_batch(batch, row))[0] for row in range(len(batch))]
    assert together == alone


def select_batch(batch: VQABatch, row: int) -> VQABatch:
    """Row `row` of a left-padded batch as a batch of one, its padding removed."""
    keep = batch.attention_mask[row].bool()
    images = batch.pixel_values[row : row + 1]
    return VQABatch(
        input_ids=batch.input_ids[row : row + 1, keep],
        attention_mask=batch.attention_mask[row : row + 1, keep],
        pixel_values=images,
        image_grid_thw=None,
        token_role=batch.token_role[row : row + 1, keep],
        answer=batch.answer[row : row + 1],
        question_type=batch.question_type[row : row + 1],
        candidates=batch.candidates[row : row + 1],
        id=batch.id[row : row + 1],
        question=batch.question[row : row + 1],
        image=batch.image[row : row + 1],
    )
