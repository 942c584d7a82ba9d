"""VQA guardrails: the audit of every sample's supervised tokens before fit, and their count during fit.

The audit runs the training encoding of every record (the image segment from the processor on an image of the
record's size, without decoding the pixels) through the masking, and proves per sample that what the loss will
see is the answer: the supervised tokens of each trained answer decode to its text, followed by the token that
ends an answer (the plain template's end-of-sequence token, the chat template's end-of-turn token). A training
sample with no supervised token, an answer cut by `data.max_length`, a supervised answer that decodes to
anything else, or (for a masking that must not) a supervised prompt token is a hard error naming the record.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vigil.core.files import image_size
from vigil.core.guardrails import AuditReport
from vigil.tasks.vqa.masking import VQAMasking
from vigil.tasks.vqa.prompts import PromptEncoder, Role
from vigil.tasks.vqa.records import Catalog, VQARecord

NAMED_RECORDS = 3


@dataclass
class SampleCheck:
    """What the audit found in one record's training sequence."""

    record: str
    question_type: str
    length: int
    tokens: int
    image_tokens: int
    supervised: int
    supervised_prompt: int
    truncated: bool
    answer_cut: bool
    mismatches: list[str] = field(default_factory=list)


class ImageSegments:
    """The processor's image segment for each image size, computed once per size on a blank image of it; each
    image file's size is read once (Kvasir-VQA asks about nine questions of every image)."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder
        self.by_size: dict[tuple[int, int], Any] = {}
        self.size_of: dict[Path, tuple[int, int]] = {}

    def __call__(self, record: VQARecord) -> Any:
        """The image segment of the record's image, read from the file's header (its pixels are not decoded)."""
        size = self.size_of.get(record.path)
        if size is None:
            size = self.size_of[record.path] = image_size(record.path, record.record)
        if size not in self.by_size:
            self.by_size[size] = self.encoder.image_segment(Image.new("RGB", size))
        return self.by_size[size]


def audit_splits(catalog: Catalog, encoder: PromptEncoder, masking: VQAMasking, max_length: int) -> AuditReport:
    """Per split: questions per type, sequence lengths, supervised tokens per sample and type, truncation; for
    training, candidates per closed type and the majority answers; hard errors for unusable training samples."""
    report = AuditReport()
    report.splits["all"] = source_summary(catalog)
    segments = ImageSegments(encoder)
    for split, records in catalog.splits.items():
        checks = [check_sample(record, encoder, segments(record), masking, max_length) for record in records]
        report.splits[split] = split_summary(records, checks)
        judge(report, split, checks, masking, max_length)
    report.splits["train"]["candidates_per_type"] = {name: len(c) for name, c in catalog.candidates.items()}
    unlisted = {name: len(c) for name, c in catalog.candidates.items() if len(c) > encoder.max_listed_candidates}
    report.splits["train"]["candidates_not_listed"] = unlisted
    if encoder.show_candidates and unlisted:
        report.warnings.append(
            f"train: the candidates of {', '.join(f'{name} ({count})' for name, count in unlisted.items())} are not "
            f"listed in the prompts (more than data.max_listed_candidates={encoder.max_listed_candidates}); "
            "constrained decoding still keeps answers to them"
        )
    report.splits["train"]["majority_answer"] = dict(catalog.majority)
    for split in ("train", "val"):
        if not catalog.splits[split]:
            report.errors.append(f"{catalog.source}: split '{split}' has no records")
    if catalog.policy.skipped:
        reasons = catalog.policy.skipped_by_reason()
        report.warnings.append(f"{catalog.source}: {len(catalog.policy.skipped)} records skipped: {reasons}")
    return report


def source_summary(catalog: Catalog) -> dict[str, Any]:
    """What reading the records found, beyond the splits."""
    return {
        "source": str(catalog.source),
        "records": sum(len(records) for records in catalog.splits.values()),
        "skipped": len(catalog.policy.skipped),
        "skipped_by_reason": catalog.policy.skipped_by_reason(),
    }


def check_sample(
    record: VQARecord, encoder: PromptEncoder, image: Any, masking: VQAMasking, max_length: int
) -> SampleCheck:
    """Encode a record as training does, truncate it, apply the masking, and check every supervised answer.

    NumPy, not torch, for the per-record arithmetic: on sequences of a few dozen tokens torch's per-call overhead
    was most of an audit of 59k records.
    """
    encoding = encoder.encode(image, record.turns)
    roles = np.asarray(encoding.roles)
    input_ids = np.asarray(encoding.input_ids)
    supervised = masking(torch.from_numpy(roles)).numpy()
    kept = np.arange(len(roles)) < max_length
    is_answer = (roles == Role.ANSWER) | (roles == Role.FINAL_ANSWER)
    check = SampleCheck(
        record=record.record,
        question_type=record.turns[-1].question_type,
        length=len(roles),
        tokens=min(len(roles), max_length),
        image_tokens=int(np.count_nonzero(roles == Role.IMAGE)),
        supervised=int(np.count_nonzero(supervised & kept)),
        supervised_prompt=int(np.count_nonzero(supervised & kept & ~is_answer)),
        truncated=len(roles) > max_length,
        answer_cut=bool(((roles == Role.FINAL_ANSWER) & ~kept).any()),
    )
    for turn, span in zip(record.turns, answer_spans(is_answer), strict=True):
        trained = supervised[span] & kept[span]
        # A cut answer is reported as cut, not as a mismatch too.
        if not trained.any() or span.stop > max_length:
            continue
        ids = tuple(input_ids[span][trained].tolist())
        if decoded_text(encoder.tokenizer, ids[:-1]) != turn.answer or ids[-1] != encoder.answer_format.end_id:
            text = encoder.tokenizer.decode(list(ids))
            check.mismatches.append(f"supervised tokens decode to {text!r}, the answer is {turn.answer!r}")
    return check


@functools.lru_cache(maxsize=65536)
def decoded_text(tokenizer: Any, ids: tuple[int, ...]) -> str:
    """The stripped text of answer tokens; answers repeat across records, so each is decoded once."""
    return tokenizer.decode(list(ids), skip_special_tokens=False).strip()


def answer_spans(is_answer: np.ndarray) -> list[slice]:
    """The token span of each answer, in order: the runs of answer tokens."""
    padded = np.zeros(len(is_answer) + 2, dtype=np.int8)
    padded[1:-1] = is_answer
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [slice(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2], strict=True)]


def split_summary(records: list[VQARecord], checks: list[SampleCheck]) -> dict[str, Any]:
    """The facts of one split."""
    fractions = [check.supervised / check.tokens if check.tokens else 0.0 for check in checks]
    by_type: dict[str, list[float]] = {}
    for check, fraction in zip(checks, fractions, strict=True):
        by_type.setdefault(check.question_type, []).append(fraction)
    questions = Counter(turn.question_type for record in records for turn in record.turns)
    return {
        "samples": len(records),
        "questions": sum(questions.values()),
        "conversations": sum(len(record.turns) > 1 for record in records),
        "questions_per_type": dict(sorted(questions.items())),
        "tokens_mean": mean([check.tokens for check in checks]),
        "tokens_max": max((check.length for check in checks), default=0),
        "image_tokens_mean": mean([check.image_tokens for check in checks]),
        "supervised_tokens_mean": mean([check.supervised for check in checks]),
        "supervised_fraction_mean": mean(fractions),
        "supervised_fraction_min": min(fractions, default=0.0),
        "supervised_fraction_by_type": {name: mean(values) for name, values in sorted(by_type.items())},
        "truncated": sum(check.truncated for check in checks),
        "answers_cut": sum(check.answer_cut for check in checks),
        "no_supervised_tokens": sum(check.supervised == 0 for check in checks),
        "answer_mismatches": sum(bool(check.mismatches) for check in checks),
    }


def judge(report: AuditReport, split: str, checks: list[SampleCheck], masking: VQAMasking, max_length: int) -> None:
    """Hard errors for training samples the loss cannot use as intended; warnings for the evaluation splits."""
    problems = {
        "have their final answer cut by data.max_length": (
            [c for c in checks if c.answer_cut],
            f"raise data.max_length={max_length} to at least {max((c.length for c in checks), default=0)}",
        ),
        "have no supervised token": (
            [c for c in checks if c.supervised == 0 and not c.answer_cut],
            "check the masking and the records' answers",
        ),
        "have supervised tokens that are not their answer": (
            [c for c in checks if c.mismatches],
            "the tokenizer does not reproduce the answer text; check its vocabulary and the answers",
        ),
    }
    if not masking.supervises_prompt:
        problems["have supervised prompt tokens"] = (
            [c for c in checks if c.supervised_prompt],
            "the masking must supervise answers only",
        )
    for what, (failing, todo) in problems.items():
        if not failing:
            continue
        message = f"{split}: {len(failing)} samples {what} ({describe(failing)}) ({todo})"
        (report.errors if split == "train" else report.warnings).append(message)
    prompt_tokens = sum(c.supervised_prompt for c in checks)
    if split == "train" and masking.supervises_prompt and prompt_tokens:
        share = prompt_tokens / max(1, sum(c.supervised for c in checks))
        report.warnings.append(
            f"train: masking={type(masking).__name__} trains the prompt: {share:.0%} of the supervised tokens are "
            "system prompt and questions, not answers (the naive behaviour; masking=answer_only trains answers)"
        )


def describe(checks: list[SampleCheck]) -> str:
    """The first few failing records, and the first reason when there is one."""
    named = ", ".join(check.record for check in checks[:NAMED_RECORDS])
    more = f" and {len(checks) - NAMED_RECORDS} more" if len(checks) > NAMED_RECORDS else ""
    reason = f": {checks[0].mismatches[0]}" if checks[0].mismatches else ""
    return f"{named}{more}{reason}"


def mean(values: list[float]) -> float:
    """The mean, 0 for no values."""
    return sum(values) / len(values) if values else 0.0


def health_stats(masking: VQAMasking, token_role: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, float]:
    """`supervised_tokens` of a training batch (those the shifted loss sees: never the first token), and their
    share of its real tokens (`supervised_fraction`)."""
    supervised = float(masking(token_role)[:, 1:].sum())
    return {"supervised_tokens": supervised, "supervised_fraction": supervised / max(1.0, float(attention_mask.sum()))}


def health_alerts(stats: dict[str, float], *, min_supervised_tokens: float) -> dict[str, str]:
    """An alert when a batch trains on (almost) no tokens: its loss is zero and teaches nothing."""
    if stats["supervised_tokens"] >= min_supervised_tokens:
        return {}
    return {
        "no_supervised_tokens": (
            f"a training batch has {stats['supervised_tokens']:.0f} supervised tokens: its loss is zero and nothing "
            "is learnt; check the label masking (vigil-audit: supervised_tokens_mean, no_supervised_tokens) and "
            "data.max_length"
        )
    }
