"""Locally trained tokenizers: the same corpus gives the same tokenizer, saved and loaded like a checkpoint's."""

from __future__ import annotations

from pathlib import Path

from vigil.core.tiny import ensure_wordpiece_tokenizer, load_tokenizer, wordpiece_tokenizer

CORPUS = ["A red circle at the top left.", "A small blue square, bottom right.", "Two red squares."] * 3


def test_wordpiece_vocabulary_depends_on_the_corpus_only():
    first, second = wordpiece_tokenizer(CORPUS, 80), wordpiece_tokenizer(list(reversed(CORPUS)), 80)
    assert first.get_vocab() == second.get_vocab()


def test_known_words_are_one_token_and_new_words_split_into_characters():
    tokenizer = wordpiece_tokenizer(CORPUS, 80)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("red tub")["input_ids"])
    assert pieces == ["[CLS]", "red", "t", "##u", "##b", "[SEP]"]


def test_vocabulary_is_cut_at_the_size_keeping_the_most_frequent_words():
    characters = {c for text in CORPUS for c in text.lower() if not c.isspace()}
    size = 5 + 2 * len(characters) + 2
    vocabulary = wordpiece_tokenizer(CORPUS, size).get_vocab()
    assert len(vocabulary) == size
    # "red" is the most frequent word; of the words seen three times, "at" comes first by spelling.
    assert {"red", "at"} <= vocabulary.keys()
    assert "circle" not in vocabulary


def test_saved_tokenizer_loads_through_auto_tokenizer(tmp_path: Path):
    folder = ensure_wordpiece_tokenizer(tmp_path, CORPUS, 80)
    loaded = load_tokenizer(str(folder))
    assert loaded("red circle")["input_ids"] == wordpiece_tokenizer(CORPUS, 80)("red circle")["input_ids"]
    assert ensure_wordpiece_tokenizer(tmp_path, CORPUS, 80) == folder
