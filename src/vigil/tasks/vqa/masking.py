"""Which tokens carry the loss: `labels` from each token's role, -100 where a token is not supervised.

The roles come from the segments the sequence was built from (`prompts.py`), so a strategy is a choice of roles,
never a search for where an answer starts. Image tokens and padding are never supervised: an image token's
embedding is replaced by vision features, so predicting it teaches nothing (LLaVA masks them as well).
"""

from __future__ import annotations

import torch

from vigil.tasks.vqa.prompts import Role

IGNORE_INDEX = -100


class Masking:
    """Supervises the tokens whose role is in `roles`; `supervises_prompt` says whether it trains prompt tokens."""

    roles: tuple[Role, ...] = ()
    supervises_prompt = False

    def __call__(self, token_role: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the supervised tokens, the shape of `token_role`."""
        return torch.isin(token_role, torch.tensor([int(role) for role in self.roles], device=token_role.device))

    def labels(self, input_ids: torch.Tensor, token_role: torch.Tensor) -> torch.Tensor:
        """The token ids where supervised, IGNORE_INDEX elsewhere."""
        return torch.where(self(token_role), input_ids, torch.full_like(input_ids, IGNORE_INDEX))


class AnswerOnly(Masking):
    """Default: only the last turn's answer and its end-of-sequence token."""

    roles = (Role.FINAL_ANSWER,)


class MultiTurn(Masking):
    """Every answer of a conversation (with its end-of-sequence token); never a user turn or the system prompt."""

    roles = (Role.ANSWER, Role.FINAL_ANSWER)


class FullSequence(Masking):
    """The naive behaviour, kept for ablation: every text token, system prompt and questions included."""

    roles = (Role.SYSTEM, Role.PROMPT, Role.ANSWER, Role.FINAL_ANSWER)
    supervises_prompt = True
