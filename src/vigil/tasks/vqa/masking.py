"""Which tokens carry the loss: a mask from each token's role, and `labels` with -100 where it is not supervised.

The roles come from the segments the sequence was built from (`prompts.py`), so a strategy is a choice of roles,
never a search for where an answer starts. Image tokens and padding are never supervised: an image token's
embedding is replaced by vision features, so predicting it teaches nothing (LLaVA masks them as well).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from vigil.tasks.vqa.prompts import Role

IGNORE_INDEX = -100


class VQAMasking(Protocol):
    """A masking strategy: which tokens of a sequence are supervised, from their roles alone.

    `supervises_prompt` says whether it trains tokens that are not answers (the audit then warns instead of
    refusing them).
    """

    supervises_prompt: bool

    def __call__(self, token_role: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the supervised tokens, the shape of `token_role`."""


class RoleMasking:
    """Supervises the tokens whose role is in `roles`."""

    roles: ClassVar[tuple[Role, ...]] = ()
    supervises_prompt: bool = False

    def __call__(self, token_role: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the supervised tokens, the shape of `token_role`."""
        return torch.isin(token_role, torch.tensor([int(role) for role in self.roles], device=token_role.device))


class AnswerOnlyMasking(RoleMasking):
    """Only the last turn's answer and its end-of-sequence token (earlier answers of a conversation are context)."""

    roles = (Role.FINAL_ANSWER,)


class MultiTurnMasking(RoleMasking):
    """Default: every answer of a conversation (with its end-of-sequence token); never a user turn or the system
    prompt. On a single-turn record it is `AnswerOnlyMasking`."""

    roles = (Role.ANSWER, Role.FINAL_ANSWER)


class FullSequenceMasking(RoleMasking):
    """The naive behaviour, kept for ablation: every text token, system prompt and questions included."""

    roles = (Role.SYSTEM, Role.PROMPT, Role.ANSWER, Role.FINAL_ANSWER)
    supervises_prompt = True


def supervised_labels(masking: VQAMasking, input_ids: torch.Tensor, token_role: torch.Tensor) -> torch.Tensor:
    """The token ids where `masking` supervises, IGNORE_INDEX elsewhere: the loss's labels."""
    return torch.where(masking(token_role), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
