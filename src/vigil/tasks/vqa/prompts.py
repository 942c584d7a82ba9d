"""The instruction template and its tokenisation: every token of a sequence knows which segment it came from.

A sequence is built from segments (system prompt, image, each user prompt, each answer), each tokenised on its
own and concatenated, as TRL does for completion-only loss: the boundary between prompt and answer is a token
boundary by construction, so a label mask taken from the segments can never drift by a token. Each token carries
the `Role` of its segment; the masking strategies choose the supervised roles from that alone.

This module holds the plain text template (`data.prompt=plain`, the seed experiment's); `chat.py` renders the
same segments with a checkpoint's own chat template. The plain text is the surgical VQA template (one
user/assistant pair per turn):

    System: You are a surgical VQA assistant. Answer concisely with only the final answer.
    User: <image>
    Question type: color
    Question: What color is the polyp?
    Valid answers: red, white, yellow
    Assistant: Answer: red</s>

An answer segment is the answer after one space, then the tokenizer's end-of-sequence token, so the model learns
to stop; the image segment is whatever the checkpoint's processor expands its placeholder into (N image tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
from PIL import Image

from vigil.core.errors import ConfigError

# What a processor returns per token rather than per image (the model derives modality ids from the tokens).
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
SYSTEM_PROMPT = "You are a surgical VQA assistant. Answer concisely with only the final answer."
# A closed type with more candidates than this is not listed in its prompts ("Valid answers: ..."): real data
# gives free-text closed types hundreds of distinct answers, and listing them all would make every prompt grow
# with the data. Constrained decoding still keeps answers to the whole list.
MAX_LISTED_CANDIDATES = 16
# Texts whose tokens are kept: the template's constant pieces, question templates and frequent answers.
TOKEN_CACHE_SIZE = 16384


class Role(IntEnum):
    """What a token of a sequence is: padding, the system prompt, the image, a user prompt or an answer.

    `FINAL_ANSWER` is the last turn's answer (the one `answer_only` trains and evaluation asks for); `ANSWER` the
    answers of earlier turns of a conversation.
    """

    PADDING = 0
    SYSTEM = 1
    IMAGE = 2
    PROMPT = 3
    ANSWER = 4
    FINAL_ANSWER = 5


@dataclass(frozen=True)
class Turn:
    """One question about the image and its answer, with the question's type and its candidate answers."""

    question: str
    answer: str
    question_type: str
    candidates: tuple[str, ...] = ()


ImageSegment = tuple[list[int], dict[str, torch.Tensor]]


@dataclass
class Encoding:
    """A tokenised sequence: token ids, the role of each token, and the processor's image tensors."""

    input_ids: list[int]
    roles: list[int]
    image_inputs: dict[str, torch.Tensor]


@dataclass(frozen=True)
class AnswerFormat:
    """How an answer is spelt in a sequence: its text after `prefix`, then the token `end_id` that ends it (the
    end-of-sequence token of the plain template, the end-of-turn token of a chat template)."""

    prefix: str
    end_id: int

    def token_ids(self, tokenizer: Any, answer: str) -> list[int]:
        """The tokens of an answer segment, end token included: exactly what training supervises and what
        constrained decoding and ranking score."""
        return [*tokenizer(self.prefix + answer, add_special_tokens=False)["input_ids"], self.end_id]


def question_text(turn: Turn, show_candidates: bool) -> str:
    """What a turn asks: its question type, the question, and the candidate answers when shown."""
    lines = [f"Question type: {turn.question_type}", f"Question: {turn.question}"]
    if show_candidates and turn.candidates:
        lines.append(f"Valid answers: {', '.join(turn.candidates)}")
    return "\n".join(lines)


def prompt_text(turn: Turn, show_candidates: bool) -> str:
    """The user prompt of one turn, after the image, up to and including `Answer:`."""
    return "\n" + question_text(turn, show_candidates) + "\nAssistant: Answer:"


def answer_text(answer: str) -> str:
    """The answer segment's text: the answer after one space (the template's `Answer:` ends without one)."""
    return " " + answer


def plain_answer_format(tokenizer: Any) -> AnswerFormat:
    """The plain template's answers: after one space, ended by the end-of-sequence token."""
    return AnswerFormat(answer_text(""), tokenizer.eos_token_id)


def answer_token_ids(tokenizer: Any, answer: str) -> list[int]:
    """The tokens of an answer segment of the plain template, end-of-sequence included."""
    return plain_answer_format(tokenizer).token_ids(tokenizer, answer)


class PromptEncoder:
    """Tokenises conversations about an image into the template, segment by segment, with a role per token.

    `image_placeholder` is the text the processor expands into image tokens (LLaVA: `<image>`; Qwen2-VL:
    `<|vision_start|><|image_pad|><|vision_end|>`); None takes the processor's `image_token`. An
    `image_row_separator` (text) is written after each row of a square grid of image tokens, as LLaVA-NeXT ends
    each row with its image newline: an image token's column is then its distance from a separator. A turn's candidates
    are listed when `show_candidates` is set and there are at most `max_listed_candidates` of them. An empty
    `system_prompt` writes no `System:` line.
    """

    def __init__(
        self,
        processor: Any,
        image_placeholder: str | None = None,
        show_candidates: bool = True,
        system_prompt: str = SYSTEM_PROMPT,
        max_listed_candidates: int = MAX_LISTED_CANDIDATES,
        image_row_separator: str | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_placeholder = image_placeholder or processor.image_token
        self.image_row_separator = image_row_separator
        self.show_candidates = show_candidates
        self.max_listed_candidates = max_listed_candidates
        self.system_prompt = system_prompt
        self.token_cache: dict[str, list[int]] = {}
        # The placeholder's expansion by image size, and whether the image processor alone gives the processor's
        # image tensors (None: not checked yet).
        self.expansion_of_size: dict[tuple[int, int], list[int]] = {}
        self.image_processor_alone: bool | None = None
        self.answer_format = plain_answer_format(self.tokenizer)

    def lists_candidates(self, turn: Turn) -> bool:
        """Whether the turn's prompt lists its candidates: shown, and few enough to list."""
        return self.show_candidates and len(turn.candidates) <= self.max_listed_candidates

    def encode(self, image: ImageSegment, turns: Sequence[Turn], final_answer: bool = True) -> Encoding:
        """The sequence of `turns` about an image (its `image_segment`); without `final_answer` it ends at the last
        turn's `Answer:`, ready for generation."""
        image_ids, image_inputs = image
        encoding = Encoding([], [], image_inputs)
        if self.tokenizer.bos_token_id is not None:
            encoding.input_ids.append(self.tokenizer.bos_token_id)
            encoding.roles.append(Role.SYSTEM)
        if self.system_prompt:
            self.append(encoding, self.text_ids(f"System: {self.system_prompt}\n"), Role.SYSTEM)
        for index, turn in enumerate(turns):
            last = index == len(turns) - 1
            self.append(encoding, self.text_ids("User: " if index == 0 else "\nUser: "), Role.PROMPT)
            if index == 0:
                self.append(encoding, image_ids, Role.IMAGE)
            self.append(encoding, self.text_ids(prompt_text(turn, self.lists_candidates(turn))), Role.PROMPT)
            if last and not final_answer:
                break
            answer_role = Role.FINAL_ANSWER if last else Role.ANSWER
            self.append(encoding, self.answer_ids(turn.answer), answer_role)
        return encoding

    def answer_ids(self, answer: str) -> list[int]:
        """The tokens of an answer segment, end token included (`AnswerFormat.token_ids`)."""
        return [*self.text_ids(self.answer_format.prefix + answer), self.answer_format.end_id]

    def image_segment(self, image: Image.Image) -> ImageSegment:
        """The processor's expansion of the image placeholder (token ids) and its image tensors.

        The expansion depends on the image's size only (LLaVA's fixed count, Qwen2-VL's patch grid), so the full
        processor call runs once per size; later images of that size go through its image processor alone, which
        skips the call's tokenising and argument merging (a third of the loader's time on the embedded data).
        That shortcut is taken only once it gave the processor's own tensors.
        """
        ids = self.expansion_of_size.get(image.size)
        if ids is not None and self.image_processor_alone:
            return ids, self.image_tensors(image)
        output = self.processor(
            text=[self.image_placeholder], images=[image], add_special_tokens=False, return_tensors="pt"
        )
        image_inputs = {key: value for key, value in output.items() if key not in TOKEN_KEYS}
        ids = output["input_ids"][0].tolist()
        if self.image_row_separator:
            ids = self.separate_rows(ids, image_inputs)
        self.expansion_of_size[image.size] = ids
        if self.image_processor_alone is None:
            self.image_processor_alone = same_tensors(self.image_tensors(image), image_inputs)
        return ids, image_inputs

    def separate_rows(self, ids: list[int], image_inputs: dict[str, torch.Tensor]) -> list[int]:
        """The placeholder's expansion with the row separator's tokens after each row of its image tokens, which
        must be one run of a square number; refused where the image tokens' positions come from their grid
        (Qwen2-VL's `image_grid_thw`), which text between them would break."""
        name = self.tokenizer.name_or_path
        if "image_grid_thw" in image_inputs:
            raise ConfigError(
                f"data.image_row_separator: the image tokens of {name} take their positions from the image grid "
                "(image_grid_thw); set data.image_row_separator=null"
            )
        image_id = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        first = ids.index(image_id) if image_id in ids else 0
        count = ids.count(image_id)
        side = math.isqrt(count)
        if count == 0 or side * side != count or ids[first : first + count] != [image_id] * count:
            raise ConfigError(
                f"data.image_row_separator: the processor of {name} expands the image into {count} image tokens, "
                "not one run of a square grid; set data.image_row_separator=null"
            )
        separator = self.text_ids(self.image_row_separator)
        rows = [ids[start : start + side] + separator for start in range(first, first + count, side)]
        return [*ids[:first], *(token for row in rows for token in row), *ids[first + count :]]

    def image_tensors(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """The image processor's tensors of one image, as the processor's call returns them."""
        return dict(self.processor.image_processor(images=[image], return_tensors="pt"))

    def text_ids(self, text: str) -> list[int]:
        """A text segment's tokens, without the special tokens the tokenizer would add around a whole text; the
        tokens of texts seen before are reused (a record repeats the template's constant pieces)."""
        ids = self.token_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self.token_cache) < TOKEN_CACHE_SIZE:
                self.token_cache[text] = ids
        return list(ids)

    @staticmethod
    def append(encoding: Encoding, ids: list[int], role: Role) -> None:
        """Add a segment's tokens with their role."""
        encoding.input_ids.extend(ids)
        encoding.roles.extend([int(role)] * len(ids))


def same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    """Whether two dicts of tensors hold the same keys with equal tensors."""
    return left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)
