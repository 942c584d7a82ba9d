"""Prompts rendered by the checkpoint's own chat template (`data.prompt=chat_template`), every token with its role.

Instruct models are tuned on their chat template; prompting them with another text costs accuracy. The
conversation (system prompt, each question with the image in the first, each answer) is rendered by the
processor's `apply_chat_template`, one message at a time: the rendering of the first k messages must be a prefix
of the rendering of k + 1, so each message adds a piece of text, and each piece is tokenised on its own as the
plain template's segments are (`prompts.py`). The template decides where the image goes; its image token is
replaced by the processor's expansion of it. Roles: the system message's text is SYSTEM, a user message's and
the template's generation prompt (`<|im_start|>assistant\\n` in ChatML) are PROMPT, the image's tokens IMAGE, and
an answer is its text followed by the template's end-of-turn token (`<|im_end|>`), nothing else: what the
template writes after that token (ChatML's newline) is PROMPT again.

`data.prompt=auto` takes the chat template when the processor has one, else the plain template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from vigil.core.errors import ConfigError
from vigil.tasks.vqa.prompts import (
    MAX_LISTED_CANDIDATES,
    SYSTEM_PROMPT,
    AnswerFormat,
    Encoding,
    ImageSegment,
    PromptEncoder,
    Role,
    Turn,
    question_text,
)

PromptName = Literal["auto", "chat_template", "plain"]
PROMPTS = ("auto", "chat_template", "plain")
# The conversation that finds how the template spells an answer and what ends it.
PROBE_QUESTION, PROBE_ANSWER = "Is it?", "yes"

Message = dict[str, Any]


def prompt_encoder(
    processor: Any,
    prompt: PromptName = "auto",
    image_placeholder: str | None = None,
    show_candidates: bool = True,
    system_prompt: str = SYSTEM_PROMPT,
    max_listed_candidates: int = MAX_LISTED_CANDIDATES,
    image_row_separator: str | None = None,
) -> PromptEncoder:
    """The encoder of `prompt`: the processor's chat template (`auto` when it has one) or the plain template."""
    check_prompt(prompt)
    has_template = bool(getattr(processor, "chat_template", None))
    if prompt == "chat_template" and not has_template:
        raise ConfigError(
            f"data.prompt=chat_template: the processor of {processor.tokenizer.name_or_path} has no chat template "
            "(use data.prompt=plain)"
        )
    if prompt == "plain" or not has_template:
        return PromptEncoder(
            processor, image_placeholder, show_candidates, system_prompt, max_listed_candidates, image_row_separator
        )
    return ChatTemplateEncoder(processor, show_candidates, system_prompt, max_listed_candidates, image_row_separator)


def check_prompt(prompt: str) -> None:
    """A ConfigError for a `data.prompt` that is not one."""
    if prompt not in PROMPTS:
        raise ConfigError(f"data.prompt={prompt} is not a prompt; valid: {', '.join(PROMPTS)}")


class ChatTemplateEncoder(PromptEncoder):
    """Tokenises conversations about an image as the processor's chat template renders them, role per token.

    An empty `system_prompt` sends no system message (the template may then write its own default, as PROMPT).
    """

    def __init__(
        self,
        processor: Any,
        show_candidates: bool = True,
        system_prompt: str = SYSTEM_PROMPT,
        max_listed_candidates: int = MAX_LISTED_CANDIDATES,
        image_row_separator: str | None = None,
    ) -> None:
        super().__init__(
            processor, processor.image_token, show_candidates, system_prompt, max_listed_candidates, image_row_separator
        )
        self.end_text, self.answer_format = self.find_answer_format()

    def encode(self, image: ImageSegment, turns: Sequence[Turn], final_answer: bool = True) -> Encoding:
        """The rendered conversation of `turns` about an image; without `final_answer` it ends with the template's
        generation prompt, ready for generation."""
        image_ids, image_inputs = image
        encoding = Encoding([], [], image_inputs)
        messages: list[Message] = []
        rendered = ""
        if self.system_prompt:
            messages.append(text_message("system", self.system_prompt))
            rendered = self.add_piece(encoding, messages, rendered, Role.SYSTEM)
        for index, turn in enumerate(turns):
            content = [{"type": "text", "text": question_text(turn, self.lists_candidates(turn))}]
            first = index == 0
            messages.append({"role": "user", "content": [{"type": "image"}, *content] if first else content})
            rendered = self.add_piece(encoding, messages, rendered, Role.PROMPT, image_ids if first else None)
            rendered = self.add_piece(encoding, messages, rendered, Role.PROMPT, generation_prompt=True)
            last = index == len(turns) - 1
            if last and not final_answer:
                break
            messages.append(text_message("assistant", turn.answer))
            after = self.render(messages)
            tail = self.after_answer(self.piece(rendered, after), turn.answer)
            answer_role = Role.FINAL_ANSWER if last else Role.ANSWER
            self.append(encoding, self.answer_ids(turn.answer), answer_role)
            self.append(encoding, self.text_ids(tail), Role.PROMPT)
            rendered = after
        return encoding

    def render(self, messages: list[Message], generation_prompt: bool = False) -> str:
        """The template's text of `messages`."""
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def add_piece(
        self,
        encoding: Encoding,
        messages: list[Message],
        rendered: str,
        role: Role,
        image_ids: list[int] | None = None,
        generation_prompt: bool = False,
    ) -> str:
        """Append what rendering `messages` adds to `rendered` with `role` (the image's tokens where the template
        put its image token); returns the new rendering."""
        text = self.render(messages, generation_prompt)
        piece = self.piece(rendered, text)
        parts = piece.split(self.image_placeholder)
        if len(parts) != (2 if image_ids is not None else 1):
            raise ConfigError(
                f"the chat template of {self.tokenizer.name_or_path} writes {len(parts) - 1} image tokens "
                f"{self.image_placeholder!r} for a message with {int(image_ids is not None)} image "
                "(use data.prompt=plain)"
            )
        self.append(encoding, self.text_ids(parts[0]), role)
        if image_ids is not None:
            self.append(encoding, image_ids, Role.IMAGE)
            self.append(encoding, self.text_ids(parts[1]), role)
        return text

    def piece(self, rendered: str, text: str) -> str:
        """What `text` adds after `rendered`; a template that rewrites earlier text cannot be split into roles."""
        if not text.startswith(rendered):
            raise ConfigError(
                f"the chat template of {self.tokenizer.name_or_path} changes the text of earlier messages when one "
                "is added, so its tokens cannot be given roles (use data.prompt=plain)"
            )
        return text[len(rendered) :]

    def after_answer(self, piece: str, answer: str) -> str:
        """The template's text after an answer and its end-of-turn token (ChatML: the newline)."""
        spelt = self.answer_format.prefix + answer
        if not piece.startswith(spelt + self.end_text):
            raise ConfigError(
                f"the chat template of {self.tokenizer.name_or_path} renders the answer {answer!r} as {piece!r}, "
                f"not as {spelt + self.end_text!r} (use data.prompt=plain)"
            )
        return piece[len(spelt + self.end_text) :]

    def find_answer_format(self) -> tuple[str, AnswerFormat]:
        """How the template spells an answer after its generation prompt, and the end-of-turn token after it (a
        special token; a template that writes none, like LLaVA-1.5's, gets the end-of-sequence token appended).
        Returns the end token's text in the template ('' when appended) and the answer format."""
        question = [text_message("user", PROBE_QUESTION)]
        piece = self.piece(
            self.render(question, generation_prompt=True),
            self.render([*question, text_message("assistant", PROBE_ANSWER)]),
        )
        prefix, found, rest = piece.partition(PROBE_ANSWER)
        if not found or prefix.strip():
            raise ConfigError(
                f"the chat template of {self.tokenizer.name_or_path} renders the answer {PROBE_ANSWER!r} as "
                f"{piece!r}, not as the answer's text (use data.prompt=plain)"
            )
        rest_ids = self.text_ids(rest)
        if rest_ids and rest_ids[0] in self.tokenizer.all_special_ids:
            end_id = rest_ids[0]
            return self.tokenizer.convert_ids_to_tokens(end_id), AnswerFormat(prefix, end_id)
        return "", AnswerFormat(prefix, self.tokenizer.eos_token_id)


def text_message(role: str, text: str) -> Message:
    """A message of text only, in the content-list form processors' templates read."""
    return {"role": role, "content": [{"type": "text", "text": text}]}
