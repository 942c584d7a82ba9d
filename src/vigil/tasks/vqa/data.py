"""VQA data: question-answer records about images, read into one catalog of records per split.

Under `data.root`, with images under `data.image_dir` (default `images/`):
- `train.jsonl`, `val.jsonl`, `test.jsonl`: one JSON record per line, `{image, question, answer}` with optional
  `question_type`, `answer_candidates` and `id`, or a multi-turn record in LLaVA's form
  `{image, conversations: [{from: human, value}, {from: gpt, value}, ...]}`. The splits are the files.
- `data.annotation_file`: a single JSONL file of such records, or the Kvasir-VQA table as CSV (`img_id`,
  `question`, `answer`, `source`; the image of a row is `<img_id>` with the first image suffix that exists, else
  `.jpg`), split by image with `data.split_fractions` and `data.split_seed` (the seeded split every task uses), so
  no image is in two splits.

An image's identity is its path under the image folder (`img_id` for the table); two records of one image in two
split files are an error. Question types missing from a record are inferred by `data.question_types` (see
`question_types.py`); closed types get their candidate answers from `data.candidates` and the training answers
(`answers.build_candidates`).
Every bad record is a DataError naming the file and line (raised, or skipped and counted with `on_error=skip`).

Training samples are whole records (every turn of a conversation in one sequence, answers included); evaluation
samples are single turns: each turn of a record is asked once, after the true earlier turns. `data.prompt` picks
how a sequence is written: the checkpoint's chat template or the plain text template (`chat.prompt_encoder`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter

from vigil.core.config import ChosenBy, unpacks
from vigil.core.data import TaskDataModule
from vigil.core.errors import ConfigError, DataError
from vigil.core.files import (
    IMAGE_SUFFIXES,
    SPLITS,
    OnError,
    RecordPolicy,
    check_split_fractions,
    jsonl_lines,
    parse_json_line,
    resolve_under,
    seeded_split,
)
from vigil.core.guardrails import AuditReport
from vigil.tasks.vqa.answers import build_candidates, majority_answers, normalize_answer, question_prior_answers
from vigil.tasks.vqa.chat import PromptName, check_prompt, prompt_encoder
from vigil.tasks.vqa.health import audit_splits
from vigil.tasks.vqa.images import DecodedImages
from vigil.tasks.vqa.lengths import LengthGroupedShuffle, training_lengths
from vigil.tasks.vqa.masking import VQAMasking
from vigil.tasks.vqa.model import TINY_SIZES, load_processor
from vigil.tasks.vqa.prompts import MAX_LISTED_CANDIDATES, SYSTEM_PROMPT, PromptEncoder, Role, Turn
from vigil.tasks.vqa.question_types import QUESTION_TYPES, QuestionTypeRules
from vigil.tasks.vqa.records import Catalog, VQABatch, VQAContext, VQARecord
from vigil.tasks.vqa.synthetic import SyntheticVQA

CSV_COLUMNS = ("img_id", "question", "answer")
IMAGE_TENSORS = ("pixel_values", "image_grid_thw")
SPEAKERS = ("human", "gpt")
Format = Literal["auto", "jsonl", "kvasir_csv"]


class VQADataset(Dataset):
    """Samples of one split: whole records for training, one asked turn each for evaluation."""

    def __init__(
        self,
        records: list[VQARecord],
        encoder: PromptEncoder,
        training: bool,
        max_length: int,
        augment: bool = False,
        images: DecodedImages | None = None,
    ) -> None:
        self.records = records
        self.encoder = encoder
        self.training = training
        self.max_length = max_length
        self.images = images if images is not None else DecodedImages(encoder.processor.image_processor, budget_bytes=0)
        self.jitter = ColorJitter(brightness=0.1, contrast=0.1) if augment else None
        self.items = [(i, len(r.turns)) for i, r in enumerate(records)]
        if not training:
            self.items = [(i, k + 1) for i, r in enumerate(records) for k in range(len(r.turns))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        position, turns = self.items[index]
        record = self.records[position]
        image = self.images(record.path, record.record)
        if self.jitter is not None:
            image = self.jitter(image)
        asked = record.turns[turns - 1]
        encoding = self.encoder.encode(self.encoder.image_segment(image), record.turns[:turns], self.training)
        length = self.max_length if self.training else None
        return {
            "input_ids": encoding.input_ids[:length],
            "roles": encoding.roles[:length],
            "image_inputs": encoding.image_inputs,
            "answer": asked.answer,
            "question_type": asked.question_type,
            "candidates": asked.candidates,
            "id": record.id if len(record.turns) == 1 else f"{record.id}#{turns}",
            "question": asked.question,
            "image": str(record.path),
        }


class VQACollate:
    """Pads token ids and roles (right for training, left for generation) and stacks the image tensors."""

    def __init__(self, pad_token_id: int, padding_side: Literal["left", "right"]) -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, samples: list[dict[str, Any]]) -> VQABatch:
        width = max(len(sample["input_ids"]) for sample in samples)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        roles = torch.full((len(samples), width), int(Role.PADDING), dtype=torch.long)
        for row, sample in enumerate(samples):
            length = len(sample["input_ids"])
            columns = slice(width - length, width) if self.padding_side == "left" else slice(0, length)
            input_ids[row, columns] = torch.tensor(sample["input_ids"])
            roles[row, columns] = torch.tensor(sample["roles"])
        images = stack_image_inputs([sample["image_inputs"] for sample in samples])
        return VQABatch(
            input_ids=input_ids,
            attention_mask=(roles != Role.PADDING).long(),
            pixel_values=images["pixel_values"],
            image_grid_thw=images.get("image_grid_thw"),
            token_role=roles,
            answer=[sample["answer"] for sample in samples],
            question_type=[sample["question_type"] for sample in samples],
            candidates=[sample["candidates"] for sample in samples],
            id=[sample["id"] for sample in samples],
            question=[sample["question"] for sample in samples],
            image=[sample["image"] for sample in samples],
        )


def stack_image_inputs(inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate each sample's image tensors along the first axis (images for LLaVA, patches for Qwen2-VL)."""
    unknown = set(inputs[0]) - set(IMAGE_TENSORS)
    if unknown:
        raise ConfigError(
            f"the processor returns {sorted(unknown)} besides pixel values, which the VQA batch does not carry "
            f"(supported: {', '.join(IMAGE_TENSORS)}: LLaVA- and Qwen2-VL-style processors)"
        )
    return {key: torch.cat([sample[key] for sample in inputs]) for key in inputs[0]}


@unpacks(tiny=ChosenBy("checkpoint", TINY_SIZES))
class VQADataModule(TaskDataModule):
    """VQA records in JSONL (split files or one file) or the Kvasir-VQA CSV table, or the generated default."""

    batch_type = VQABatch
    synthetic_type = SyntheticVQA

    def __init__(
        self,
        root: str,
        cache_dir: str,
        checkpoint: str,
        tiny: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        image_placeholder: str | None = None,
        image_row_separator: str | None = None,
        prompt: PromptName = "auto",
        system_prompt: str = SYSTEM_PROMPT,
        format: Format = "auto",
        annotation_file: str | None = None,
        image_dir: str = "images",
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        question_types: Sequence[dict[str, str]] = (),
        candidates: dict[str, Sequence[str]] | None = None,
        candidates_min_count: int = 1,
        show_candidates: bool = True,
        max_listed_candidates: int = MAX_LISTED_CANDIDATES,
        max_length: int = 512,
        batch_size: int = 16,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        augment: bool = True,
        image_cache_mb: int = 512,
        group_by_length: bool = False,
        on_error: OnError = "raise",
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, synthetic, seed)
        if format not in ("auto", "jsonl", "kvasir_csv"):
            raise ConfigError(f"data.format={format} is not a format; valid: auto, jsonl, kvasir_csv")
        check_prompt(prompt)
        self.cache_dir = Path(cache_dir)
        self.checkpoint = checkpoint
        self.tiny = tiny
        self.processor_kwargs = dict(processor_kwargs or {})
        self.image_placeholder = image_placeholder
        self.image_row_separator = image_row_separator
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.format = format
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.rules = QuestionTypeRules([dict(rule) for rule in question_types])
        self.configured_candidates = {name: list(values) for name, values in (candidates or {}).items()}
        self.candidates_min_count = candidates_min_count
        self.show_candidates = show_candidates
        self.max_listed_candidates = max_listed_candidates
        self.max_length = max_length
        self.augment = augment
        if isinstance(image_cache_mb, bool) or not isinstance(image_cache_mb, int) or image_cache_mb < 0:
            raise ConfigError(
                f"data.image_cache_mb={image_cache_mb!r}: give the megabytes of decoded images to keep (0: none)"
            )
        self.image_cache_mb = image_cache_mb
        self.group_by_length = group_by_length
        self.on_error = on_error
        self.catalog: Catalog | None = None
        self.encoder: PromptEncoder | None = None
        self.images: DecodedImages | None = None

    def read(self) -> None:
        """Read and check the records, build the candidates and the prompt encoder (the checkpoint's processor)."""
        self.catalog = self.read_catalog()
        processor = load_processor(self.checkpoint, self.cache_dir, self.tiny, self.processor_kwargs)
        self.encoder = prompt_encoder(
            processor,
            self.prompt,
            self.image_placeholder,
            self.show_candidates,
            self.system_prompt,
            self.max_listed_candidates,
            self.image_row_separator,
        )
        self.images = DecodedImages(processor.image_processor, self.image_cache_mb * 2**20)

    def read_catalog(self) -> Catalog:
        """Every split's checked records, with the candidates of each closed type filled in."""
        policy = RecordPolicy(self.on_error)
        image_root = self.data_root / self.image_dir
        reader = RecordReader(self.rules, policy, self.data_root, image_root)
        source, splits = self.read_splits(reader)
        training_turns = [turn for record in splits["train"] for turn in record.turns]
        candidates = build_candidates(self.configured_candidates, training_turns, self.candidates_min_count)
        splits = {split: [with_candidates(r, candidates) for r in records] for split, records in splits.items()}
        majority, prior = majority_answers(training_turns), question_prior_answers(training_turns)
        return Catalog(source, splits, policy, candidates, majority, prior)

    def read_splits(self, reader: RecordReader) -> tuple[Path, dict[str, list[VQARecord]]]:
        """The records by split: from the split files, or one file split by image."""
        root = self.data_root
        if self.annotation_file:
            path = resolve_under(root, self.annotation_file, "config", "data.annotation_file")
            csv_table = self.format == "kvasir_csv" or (self.format == "auto" and path.suffix.lower() == ".csv")
            records = reader.read_csv(path) if csv_table else reader.read_jsonl(path)
            return path, split_by_image(records, self.split_fractions, self.split_seed)
        if self.format == "kvasir_csv":
            raise ConfigError("data.format=kvasir_csv needs data.annotation_file (the table to split by image)")
        if not (root / "train.jsonl").is_file():
            raise DataError(
                root,
                None,
                "no train.jsonl",
                "point data.root at the folder of the split files, or set data.annotation_file",
            )
        splits = {split: reader.read_jsonl(root / f"{split}.jsonl") for split in SPLITS}
        check_disjoint(splits)
        return root, splits

    def audit(self, masking: VQAMasking) -> AuditReport:
        """The VQA audit of every split under `masking` (see `health.audit_splits`)."""
        self.setup()
        return audit_splits(self.catalog, self.encoder, masking, self.max_length)

    def context(self) -> VQAContext:
        """The training split's majority answer of each question type and of each question text (baselines), and
        how the prompt spells an answer, and the processor."""
        self.setup()
        catalog = self.catalog
        return VQAContext(
            dict(catalog.majority), dict(catalog.question_prior), self.encoder.answer_format, self.encoder.processor
        )

    def image_files(self, split: str) -> list[Path]:
        """The image files of `split`, for the preflight's leakage check."""
        self.setup()
        return [record.path for record in self.catalog.splits[split]]

    def dataset(self, split: str) -> VQADataset:
        """The Dataset of one split; colour jitter only for training, when `augment` is set."""
        self.setup()
        training = split == "train"
        return VQADataset(
            self.catalog.splits[split], self.encoder, training, self.max_length, self.augment and training, self.images
        )

    def training_batches(self, dataset: VQADataset) -> dict[str, Any]:
        """Shuffled batches (the default), or with `group_by_length` batches of similar length, shuffled afresh
        each epoch from `(seed, epoch)` as well."""
        batches = super().training_batches(dataset)
        if not self.group_by_length:
            return batches
        lengths = training_lengths(dataset.records, self.encoder, self.max_length)
        return batches | {"sampler": LengthGroupedShuffle(lengths, self.batch_size, self.seed)}

    def collate(self, split: str) -> Callable[[list[dict[str, Any]]], VQABatch]:
        """Training pads on the right; evaluation pads on the left, so every prompt ends where generation starts."""
        self.setup()
        return VQACollate(self.encoder.tokenizer.pad_token_id, "right" if split == "train" else "left")


class RecordReader:
    """Reads VQA records from JSONL or the Kvasir-VQA CSV table, checking each; bad ones go to the policy."""

    def __init__(self, rules: QuestionTypeRules, policy: RecordPolicy, root: Path, image_root: Path) -> None:
        self.rules = rules
        self.policy = policy
        self.root = root
        self.image_root = image_root
        # Each image is asked about several times (Kvasir-VQA: nine questions per image): its file is found once.
        self.found: dict[str, Path] = {}
        self.file_of_id: dict[str, str] = {}

    def read_jsonl(self, path: Path) -> list[VQARecord]:
        """One record per non-empty line; a line that is not a JSON object is a DataError naming it."""
        records = []
        for number, line in jsonl_lines(path, missing="add it, or split one file with data.annotation_file"):
            try:
                records.append(self.jsonl_record(path, number, line))
            except DataError as error:
                self.policy.reject(error)
        return records

    def jsonl_record(self, path: Path, number: int, line: str) -> VQARecord:
        """One parsed and checked JSONL line."""
        where = f"line {number}"
        item = parse_json_line(path, number, line)
        if not isinstance(item, dict):
            raise DataError(path, where, f"malformed record: a {type(item).__name__}, not an object", "fix the line")
        image = item.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DataError(path, where, "malformed record: no 'image' path", "add the image's path")
        if "conversations" in item:
            turns = self.conversation_turns(path, where, item["conversations"])
        else:
            turns = (self.single_turn(path, where, item),)
        record_id = str(item.get("id", f"{path.stem}:{number}"))
        return VQARecord(record_id, image, self.image_path(path, where, image), turns, path, where)

    def single_turn(self, path: Path, where: str, item: dict[str, Any]) -> Turn:
        """The turn of a `{question, answer}` record, with its type and candidates checked."""
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataError(path, where, "empty question", "give the record a 'question' text")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(path, where, "empty answer", "give the record an 'answer' text, or drop it")
        candidates = self.answer_candidates(path, where, item.get("answer_candidates"), answer)
        question_type = item.get("question_type") or self.rules.infer(question, bool(candidates))
        if question_type not in QUESTION_TYPES:
            raise DataError(
                path, where, f"unknown question type '{question_type}'", f"use one of {', '.join(QUESTION_TYPES)}"
            )
        return Turn(question.strip(), answer.strip(), question_type, candidates)

    @staticmethod
    def answer_candidates(path: Path, where: str, candidates: Any, answer: str) -> tuple[str, ...]:
        """A record's own candidate answers (mcq); the answer must be one of them."""
        if candidates is None:
            return ()
        if not isinstance(candidates, list) or not all(isinstance(c, str) and c.strip() for c in candidates):
            raise DataError(path, where, "answer_candidates is not a list of texts", "fix the list")
        if normalize_answer(answer) not in {normalize_answer(c) for c in candidates}:
            raise DataError(path, where, f"answer '{answer}' is not among answer_candidates", "fix the answer or list")
        return tuple(c.strip() for c in candidates)

    def conversation_turns(self, path: Path, where: str, conversation: Any) -> tuple[Turn, ...]:
        """The turns of a LLaVA conversation: human and gpt alternate, starting with human, ending with gpt."""
        if not isinstance(conversation, list) or not conversation:
            raise DataError(path, where, "conversations is not a list of turns", "give [{from, value}, ...]")
        speakers = [message.get("from") if isinstance(message, dict) else None for message in conversation]
        for number, speaker in enumerate(speakers):
            expected = SPEAKERS[number % 2]
            if speaker != expected:
                raise DataError(
                    path,
                    where,
                    f"conversation does not alternate: message {number} is from '{speaker}', expected '{expected}'",
                    "human and gpt messages must alternate, starting with human",
                )
        if len(conversation) % 2:
            raise DataError(
                path, where, "conversation ends on a human turn", "end it with the gpt answer, or drop the question"
            )
        turns = []
        for number in range(0, len(conversation), 2):
            question = conversation[number].get("value")
            answer = conversation[number + 1].get("value")
            if not isinstance(question, str) or not question.replace("<image>", "").strip():
                raise DataError(path, where, f"empty question in message {number}", "fix the conversation")
            if not isinstance(answer, str) or not answer.strip():
                raise DataError(path, where, f"empty answer in message {number + 1}", "fix the conversation")
            question = question.replace("<image>", "").strip()
            turns.append(Turn(question, answer.strip(), self.rules.infer(question, False)))
        return tuple(turns)

    def image_path(self, path: Path, where: str, image: str) -> Path:
        """The record's image file under the image root; one escaping it or missing is a DataError."""
        if image in self.found:
            return self.found[image]
        resolved = resolve_under(self.image_root, image, path, where)
        if not resolved.is_file():
            folder = self.image_root.relative_to(self.root) if self.image_root.is_relative_to(self.root) else ""
            raise DataError(
                path, where, f"missing image file: {folder}/{image} not found", "add the image, or fix data.image_dir"
            )
        self.found[image] = resolved
        return resolved

    def read_csv(self, path: Path) -> list[VQARecord]:
        """The Kvasir-VQA table: one question-answer pair per row, the image named by `img_id`."""
        if not path.is_file():
            raise DataError(path, None, "annotation file not found", "fix data.root or data.annotation_file")
        records = []
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise DataError(path, "line 1", f"missing column(s) {missing}", f"the header needs {list(CSV_COLUMNS)}")
            try:
                for row in reader:
                    try:
                        records.append(self.csv_record(path, f"line {reader.line_num}", row))
                    except DataError as error:
                        self.policy.reject(error)
            except csv.Error as error:
                raise DataError(path, f"line {reader.line_num}", f"malformed CSV: {error}", "fix the file") from None
        return records

    def csv_record(self, path: Path, where: str, row: dict[str | None, Any]) -> VQARecord:
        """One table row as a single-turn record."""
        if None in row or any(value is None for value in row.values()):
            raise DataError(path, where, "malformed row: wrong number of fields", "quote fields that contain commas")
        img_id = row["img_id"].strip()
        if not img_id:
            raise DataError(path, where, "no img_id", "give the row its image id")
        turn = self.single_turn(path, where, {"question": row["question"], "answer": row["answer"]})
        image = self.file_of_id.get(img_id) or next(
            (img_id + s for s in IMAGE_SUFFIXES if (self.image_root / (img_id + s)).is_file()), img_id + ".jpg"
        )
        self.file_of_id[img_id] = image
        record_id = f"{img_id}:{where.removeprefix('line ')}"
        return VQARecord(record_id, image, self.image_path(path, where, image), (turn,), path, where)


def with_candidates(record: VQARecord, candidates: dict[str, tuple[str, ...]]) -> VQARecord:
    """The record with each closed-type turn that lists no candidates of its own given its type's."""
    turns = tuple(
        turn if turn.candidates else replace(turn, candidates=candidates.get(turn.question_type, ()))
        for turn in record.turns
    )
    return replace(record, turns=turns)


def split_by_image(records: list[VQARecord], fractions: Sequence[float], seed: int) -> dict[str, list[VQARecord]]:
    """Train/val/test by image (`files.seeded_split` of the image ids), so no image is in two splits."""
    images = seeded_split(list({record.image for record in records}), fractions, seed)
    split_of = {image: split for split, names in images.items() for image in names}
    return {split: [record for record in records if split_of[record.image] == split] for split in SPLITS}


def check_disjoint(splits: dict[str, list[VQARecord]]) -> None:
    """No image may be asked about in two split files: the model would be scored on an image it trained on."""
    first: dict[Path, tuple[str, VQARecord]] = {}
    for split, records in splits.items():
        for record in records:
            seen = first.setdefault(record.path, (split, record))
            if seen[0] != split:
                raise DataError(
                    record.file,
                    record.where,
                    f"image in two splits: '{record.image}' is in {split} here and in {seen[0]} at {seen[1].record}",
                    "keep every image's questions in one split file",
                )
