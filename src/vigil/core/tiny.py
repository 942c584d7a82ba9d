"""Tiny local checkpoints: tokenizers trained with `tokenizers` on a corpus and saved as transformers folders.

No hub is reachable, so the tasks that need a tokenizer or a small checkpoint train one here, save it with
`save_pretrained` and load it back with the same `from_pretrained` call a hub id takes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vigil.core.synthetic import ensure_synthetic

WORDPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TokenizerSpec:
    """What a locally trained tokenizer depends on; its folder name is a hash of it."""

    vocab_size: int
    corpus_sha1: str
    # Names how the vocabulary is built, so a folder written by an earlier builder is not reused.
    builder: str = "counted-wordpiece"


def corpus_digest(corpus: Sequence[str]) -> str:
    """A digest of a training corpus, independent of its order."""
    return hashlib.sha1(json.dumps(sorted(corpus)).encode()).hexdigest()


def ensure_wordpiece_tokenizer(cache_dir: Path, corpus: Sequence[str], vocab_size: int) -> Path:
    """A WordPiece tokenizer trained on `corpus`, written once under `cache_dir` as a transformers folder."""
    spec = TokenizerSpec(vocab_size, corpus_digest(corpus))
    return ensure_synthetic(
        cache_dir, "tokenizer", spec, lambda folder, _: wordpiece_tokenizer(corpus, vocab_size).save_pretrained(folder)
    )


def wordpiece_tokenizer(corpus: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer ([CLS] text [SEP]) whose vocabulary depends on the corpus only.

    `tokenizers`' WordPieceTrainer breaks ties between equally frequent pieces in hash order, so the same corpus
    gives another vocabulary on every run (and a seeded run other metrics). The vocabulary is therefore counted
    here: every character (alone and as a `##` continuation), then whole words by frequency, ties by spelling.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in counts for character in word})
    pieces = [*WORDPIECE_SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters)]
    known = set(pieces)
    words = sorted((word for word in counts if word not in known), key=lambda word: (-counts[word], word))
    pieces += words[: max(vocab_size - len(pieces), 0)]
    tokenizer = Tokenizer(models.WordPiece({piece: index for index, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def byte_level_bpe_tokenizer(
    corpus: Sequence[str], vocab_size: int, special_tokens: Sequence[str], **tokens: Any
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer: any text round-trips, the corpus's frequent words are single tokens.

    `tokens` names the special tokens for transformers (`pad_token="<pad>"`, `extra_special_tokens=...`).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tokens)


def with_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer, padding with its end-of-sequence token when it has no padding token of its own."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer by hub name or folder, through `AutoTokenizer`, always able to pad."""
    return with_padding(AutoTokenizer.from_pretrained(name_or_path))
