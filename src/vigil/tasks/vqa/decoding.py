"""Answers from the model for evaluation batches: free, constrained or ranked over the candidate answers.

- `free`: greedy generation of at most `max_new_tokens` tokens.
- `constrained`: greedy generation that can only spell a candidate: `prefix_allowed_tokens_fn` walks a token trie
  of the candidates (each ending in the end token), so multi-token candidates work and the output is always one.
- `rank`: every candidate (with its end token, which penalises stopping at a prefix of a longer one)
  scored by its mean token log-likelihood after the prompt; the best one is the answer. The candidates of one
  question are scored in one forward pass.
Questions with candidates (the closed types) use the configured decoding; open questions are always free. The
answer's tokens are those of the prompt's `AnswerFormat` (the data's, through the module's context), exactly what
training supervised; its end token (end-of-sequence, or the chat template's end-of-turn) ends generation. The
model is called with the batch's declared inputs (`VQABatch.model_inputs`), of the rows being decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from vigil.core.errors import ConfigError
from vigil.tasks.vqa.model import VisionLanguageModel
from vigil.tasks.vqa.prompts import AnswerFormat, plain_answer_format
from vigil.tasks.vqa.question_types import OPEN_TYPE
from vigil.tasks.vqa.records import VQABatch

DecodingName = Literal["free", "constrained", "rank"]
DECODINGS = ("free", "constrained", "rank")
# The model inputs that hold images rather than one row per sequence (Qwen2-VL: patches of every image).
IMAGE_INPUTS = ("pixel_values", "image_grid_thw")


class AnswerTrie:
    """A prefix tree over token-id sequences: which tokens may follow a prefix of one of them."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.root: dict[int, dict] = {}
        self.depth = max((len(sequence) for sequence in sequences), default=0)
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(token, {})

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """The tokens that extend `prefix` towards a sequence; empty when `prefix` leads to none (or is complete)."""
        node = self.root
        for token in prefix:
            if token not in node:
                return []
            node = node[token]
        return list(node)


class Decoder:
    """Turns an evaluation batch into answer texts with `decoding` for closed questions, free for open ones.

    `answer_format` is how the prompt spells answers; None: the plain template's, of the model's tokenizer.
    """

    def __init__(
        self, decoding: DecodingName = "constrained", max_new_tokens: int = 8, answer_format: AnswerFormat | None = None
    ) -> None:
        if decoding not in DECODINGS:
            raise ConfigError(f"task.module.decoding={decoding} is not a decoding; valid: {', '.join(DECODINGS)}")
        self.decoding = decoding
        self.max_new_tokens = max_new_tokens
        self.answer_format = answer_format
        self.tries: dict[tuple[AnswerFormat, tuple[str, ...]], AnswerTrie] = {}

    def __call__(self, model: VisionLanguageModel, batch: VQABatch) -> list[str]:
        """One answer text per row of the batch."""
        rows = range(len(batch))
        closed = {row for row in rows if self.decoding != "free" and is_closed(batch, row)}
        answers = [""] * len(batch)
        if self.decoding == "rank":
            for row in closed:
                answers[row] = rank(model, batch, row, self.format_of(model))
            generated, constrained = [row for row in rows if row not in closed], set()
        else:
            generated, constrained = list(rows), closed
        if generated:
            for row, text in zip(generated, self.generate(model, batch, generated, constrained), strict=True):
                answers[row] = text
        return answers

    def generate(
        self, model: VisionLanguageModel, batch: VQABatch, rows: list[int], constrained: set[int]
    ) -> list[str]:
        """Greedy answers of `rows`, those in `constrained` spelling one of their candidates."""
        tokenizer, answer_format = model.tokenizer, self.format_of(model)
        inputs = select_rows(batch.model_inputs(), rows)
        tries = [
            self.trie(tokenizer, answer_format, batch.candidates[row]) if row in constrained else None for row in rows
        ]
        max_new_tokens = max([self.max_new_tokens] + [trie.depth for trie in tries if trie is not None])
        allowed_fn = None
        if constrained:
            prompt_length = inputs["input_ids"].shape[1]
            everything = list(range(len(tokenizer)))
            end = [answer_format.end_id]

            def allowed_fn(row: int, sequence: torch.Tensor) -> list[int]:
                trie = tries[row]
                if trie is None:
                    return everything
                return trie.allowed(sequence[prompt_length:].tolist()) or end

        new_tokens = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            prefix_allowed_tokens_fn=allowed_fn,
            end_token_id=answer_format.end_id,
        )
        # One generate call runs every row to the deepest candidate; a free row keeps only its own budget, so its
        # answer is the one it gets asked alone (greedy decoding is causal: its first tokens are the same).
        budgets = [max_new_tokens if trie is not None else self.max_new_tokens for trie in tries]
        return [
            answer_from_tokens(tokenizer, tokens[:budget], answer_format.end_id)
            for tokens, budget in zip(new_tokens.tolist(), budgets, strict=True)
        ]

    def trie(self, tokenizer: Any, answer_format: AnswerFormat, candidates: tuple[str, ...]) -> AnswerTrie:
        """The (cached) token trie of a candidate set."""
        key = (answer_format, candidates)
        if key not in self.tries:
            self.tries[key] = AnswerTrie([answer_format.token_ids(tokenizer, c) for c in candidates])
        return self.tries[key]

    def format_of(self, model: VisionLanguageModel) -> AnswerFormat:
        """The answer format decoded: the prompt's, else the plain template's of the model's tokenizer."""
        return self.answer_format or plain_answer_format(model.tokenizer)


def is_closed(batch: VQABatch, row: int) -> bool:
    """Whether a row's question has candidates to choose from."""
    return batch.question_type[row] != OPEN_TYPE and bool(batch.candidates[row])


def answer_from_tokens(tokenizer: Any, tokens: list[int], end_id: int) -> str:
    """The text of generated tokens up to the first end token."""
    if end_id in tokens:
        tokens = tokens[: tokens.index(end_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


@torch.no_grad()
def rank(model: VisionLanguageModel, batch: VQABatch, row: int, answer_format: AnswerFormat) -> str:
    """The candidate of `row` with the highest mean log-likelihood of its tokens (end token included)."""
    tokenizer = model.tokenizer
    candidates = batch.candidates[row]
    inputs = batch.model_inputs()
    prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
    answers = [torch.tensor(answer_format.token_ids(tokenizer, c), device=prompt.device) for c in candidates]
    longest = max(len(answer) for answer in answers)
    count, length = len(candidates), prompt.numel() + longest
    input_ids = torch.full((count, length), tokenizer.pad_token_id, dtype=torch.long, device=prompt.device)
    answer_mask = torch.zeros(count, longest, dtype=torch.bool, device=prompt.device)
    input_ids[:, : prompt.numel()] = prompt
    for index, answer in enumerate(answers):
        input_ids[index, prompt.numel() : prompt.numel() + len(answer)] = answer
        answer_mask[index, : len(answer)] = True
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, prompt.numel() :] = answer_mask
    # One row per candidate: the row's images repeated, its prompt followed by each candidate.
    candidate_inputs = select_rows(inputs, [row] * count) | {"input_ids": input_ids, "attention_mask": attention_mask}
    # The logits at the last prompt token and every answer position but the last predict the answer tokens.
    logits = model.tail_logits(**candidate_inputs, last=longest + 1)[:, :-1]
    log_probs = logits.float().log_softmax(-1).gather(-1, input_ids[:, -longest:, None]).squeeze(-1)
    scores = (log_probs * answer_mask).sum(1) / answer_mask.sum(1)
    return candidates[int(scores.argmax())]


def select_rows(inputs: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The model inputs of `rows` of a batch (repeats allowed): those rows of each per-sequence input, and the
    images of those rows."""
    index = torch.as_tensor(list(rows), device=inputs["input_ids"].device)
    selected = {name: value[index] for name, value in inputs.items() if name not in IMAGE_INPUTS}
    pixel_values, image_grid_thw = image_rows(inputs["pixel_values"], inputs["image_grid_thw"], rows)
    return selected | {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}


def image_rows(
    pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None, rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image inputs of `rows` (repeats allowed): whole images, or Qwen2-VL's patches by the grid of each."""
    index = torch.as_tensor(list(rows), device=pixel_values.device)
    if image_grid_thw is None:
        return pixel_values[index], None
    patches = torch.split(pixel_values, image_grid_thw.prod(-1).tolist())
    return torch.cat([patches[row] for row in rows]), image_grid_thw[index]
