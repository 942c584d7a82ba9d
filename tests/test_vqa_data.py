"""VQA data: JSONL split files, the Kvasir-VQA table split by image, conversations, types, candidates, bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vigil.core.errors import ConfigError, DataError
from vigil.core.files import RecordPolicy, seeded_split
from vigil.tasks.vqa import data as data_module
from vigil.tasks.vqa import images as images_module
from vigil.tasks.vqa import synthetic
from vigil.tasks.vqa.answers import build_candidates
from vigil.tasks.vqa.data import RecordReader, VQADataModule, check_disjoint, split_by_image
from vigil.tasks.vqa.images import DecodedImages
from vigil.tasks.vqa.lengths import LengthGroupedShuffle
from vigil.tasks.vqa.question_types import QUESTION_TYPES, QuestionTypeRules
from vigil.tasks.vqa.synthetic import (
    FIELD_OF_VIEW_MM,
    Scene,
    SyntheticVQA,
    ask,
    draw_scene,
    location,
    render,
    training_records,
)

RULES = [
    {"type": "count_numeric", "pattern": r"^how many\b"},
    {"type": "size_numeric", "pattern": r"\b(size|diameter)\b"},
    {"type": "color", "pattern": r"\bcolou?r\b"},
    {"type": "location", "pattern": r"^where\b"},
    {"type": "yes_no", "pattern": r"^(is|are|have)\b"},
]
# Kvasir-VQA's own question templates, with the types the rules must give them.
KVASIR = [
    ("cl8k2u1pm1dz4083265r2g3pl", "Is there a polyp?", "yes", "yes_no"),
    ("cl8k2u1pm1dz4083265r2g3pl", "What color is the abnormality?", "pink, red", "color"),
    ("cl8k2u1pm1dz4083265r2g3pl", "What is the size of the polyp?", "5-10mm", "size_numeric"),
    ("cl8k2u1q01e0e0832cynhg9qs", "How many instrumnets are in the image?", "1", "count_numeric"),
    ("cl8k2u1q01e0e0832cynhg9qs", "Where in the image is the abnormality?", "center; lower-left", "location"),
    ("cl8k2u1q01e0e0832cynhg9qs", "What type of procedure is the image taken from?", "colonoscopy", "open_ended"),
    ("cl8k2u1qh1e6b0832c2x8hj8n", "Have all polyps been removed?", "no", "yes_no"),
    ("cl8k2u1qx1e8z083218f9bz9n", "Is there text?", "yes", "yes_no"),
]


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (8, 8), (20 * index, 90, 160)).save(folder / name)


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def reader(root: Path, on_error: str = "raise", rules=RULES) -> RecordReader:
    return RecordReader(QuestionTypeRules(rules), RecordPolicy(on_error), root, root / "images")


def read_error(root: Path, records: list[dict | str], images=("a.png",)) -> str:
    write_images(root / "images", list(images))
    with pytest.raises(DataError) as raised:
        reader(root).read_jsonl(write_jsonl(root / "train.jsonl", records))
    return str(raised.value)


def split_files(root: Path, records: dict[str, list[dict]]) -> Path:
    names = sorted({r["image"] for rows in records.values() for r in rows})
    write_images(root / "images", names)
    for split, rows in records.items():
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


def datamodule(root: Path, tmp_path: Path, **overrides) -> VQADataModule:
    arguments = dict(
        root=str(root), cache_dir=str(tmp_path / "cache"), checkpoint="tiny", question_types=RULES, batch_size=4
    )
    return VQADataModule(**(arguments | overrides))


def test_split_files_are_read_with_types_inferred_and_given(tmp_path: Path):
    root = split_files(
        tmp_path,
        {
            "train": [
                {"image": "a.png", "question": "Is there a polyp?", "answer": "yes"},
                {"image": "a.png", "question": "What is shown?", "answer": "polyp", "question_type": "color"},
                {"image": "b.png", "question": "Pick one", "answer": "red", "answer_candidates": ["red", "blue"]},
            ],
            "val": [{"image": "c.png", "question": "How many polyps?", "answer": "2", "id": "v1"}],
            "test": [{"image": "d.png", "question": "Where is it?", "answer": "center"}],
        },
    )
    data = datamodule(root, tmp_path)
    catalog = data.read_catalog()
    train = catalog.splits["train"]
    assert [r.turns[0].question_type for r in train] == ["yes_no", "color", "mcq"]
    assert train[2].turns[0].candidates == ("red", "blue")
    assert catalog.splits["val"][0].id == "v1" and catalog.splits["val"][0].turns[0].question_type == "count_numeric"
    assert catalog.splits["test"][0].turns[0].question_type == "location"
    assert train[0].id == "train:1" and train[0].record == "train.jsonl:line 1"


def test_a_conversation_becomes_turns_in_order(tmp_path: Path):
    conversation = [
        {"from": "human", "value": "<image>\nIs there a polyp?"},
        {"from": "gpt", "value": "yes"},
        {"from": "human", "value": "What color is it?"},
        {"from": "gpt", "value": "red"},
    ]
    write_images(tmp_path / "images", ["a.png"])
    path = write_jsonl(tmp_path / "train.jsonl", [{"image": "a.png", "conversations": conversation}])
    (record,) = reader(tmp_path).read_jsonl(path)
    assert [(t.question, t.answer, t.question_type) for t in record.turns] == [
        ("Is there a polyp?", "yes", "yes_no"),
        ("What color is it?", "red", "color"),
    ]


def test_kvasir_table_is_split_by_image_with_types_inferred(tmp_path: Path):
    images = sorted({img_id for img_id, *_ in KVASIR})
    write_images(tmp_path / "images", [f"{img_id}.jpg" for img_id in images])
    with (tmp_path / "kvasir_vqa.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_id", "question", "answer", "source"])
        writer.writerows([[img_id, q, a, "hyperkvasir"] for img_id, q, a, _ in KVASIR])
    records = reader(tmp_path).read_csv(tmp_path / "kvasir_vqa.csv")
    assert [r.turns[0].question_type for r in records] == [t for *_, t in KVASIR]
    assert records[0].path == (tmp_path / "images" / f"{KVASIR[0][0]}.jpg").resolve()
    splits = split_by_image(records, (0.5, 0.25, 0.25), seed=0)
    image_sets = [{r.image for r in splits[s]} for s in ("train", "val", "test")]
    assert sum(map(len, image_sets)) == len(images) == len(set().union(*image_sets))
    assert sum(len(rows) for rows in splits.values()) == len(KVASIR)
    assert split_by_image(records, (0.5, 0.25, 0.25), seed=0) == splits


def test_one_jsonl_file_is_split_by_image(tmp_path: Path):
    rows = [{"image": f"{i % 10}.png", "question": "Is there a polyp?", "answer": "yes"} for i in range(40)]
    write_images(tmp_path / "images", [f"{i}.png" for i in range(10)])
    write_jsonl(tmp_path / "all.jsonl", rows)
    catalog = datamodule(
        tmp_path, tmp_path, annotation_file="all.jsonl", split_fractions=[0.6, 0.2, 0.2]
    ).read_catalog()
    counts = {split: len({r.image for r in records}) for split, records in catalog.splits.items()}
    assert counts == {"train": 6, "val": 2, "test": 2}
    # The one split rule of every task, applied to the images.
    expected = seeded_split([f"{i}.png" for i in range(10)], [0.6, 0.2, 0.2], seed=0)
    assert {split: sorted({r.image for r in records}) for split, records in catalog.splits.items()} == {
        split: sorted(images) for split, images in expected.items()
    }


def test_every_record_gets_its_types_candidates_unless_it_lists_its_own(tmp_path: Path):
    root = split_files(
        tmp_path,
        {
            "train": [
                {"image": "a.png", "question": "What color is it?", "answer": "red"},
                {"image": "a.png", "question": "Which?", "answer": "x", "answer_candidates": ["x", "y"]},
                {"image": "a.png", "question": "Why?", "answer": "because"},
            ],
            "val": [{"image": "b.png", "question": "What colour is it?", "answer": "blue"}],
            "test": [],
        },
    )
    catalog = datamodule(root, tmp_path, candidates={"color": ["blue"]}).read_catalog()
    assert [r.turns[0].candidates for r in catalog.splits["train"]] == [("blue", "red"), ("x", "y"), ()]
    assert catalog.splits["val"][0].turns[0].candidates == ("blue", "red")


def test_synthetic_data_is_read_back_by_the_same_loader_with_every_type(tmp_path: Path):
    spec = SyntheticVQA(num_images=40, image_size=32)
    data = datamodule(tmp_path, tmp_path, synthetic=vars(spec), format="jsonl")
    data.prepare_data()
    assert data.synthetic == spec and (data.data_root / "train.jsonl").is_file()
    catalog = data.read_catalog()
    turns = [t for records in catalog.splits.values() for r in records for t in r.turns]
    assert {t.question_type for t in turns} == set(QUESTION_TYPES)
    assert any(len(r.turns) > 1 for records in catalog.splits.values() for r in records)
    images = [{r.image for r in records} for records in catalog.splits.values()]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    sizes = {t.answer for t in turns if t.question_type == "size_numeric"}
    assert any(a.endswith("cm") for a in sizes) and any(a.endswith("mm") for a in sizes)


# Questions whose answers give each other away: never in one training conversation.
GIVE_EACH_OTHER_AWAY = [
    {"What is the size of the polyp?", "What is the diameter of the polyp?"},
    {"Is there more than one polyp?", "How many polyps are in the image?"},
    {"Is there more than one polyp?", "Where in the image is the polyp?"},
]


@pytest.mark.parametrize("most_turns", [1, 3])
def test_training_conversations_are_full_and_short_and_no_turn_is_answered_by_an_earlier_one(most_turns: int):
    rng = np.random.default_rng(0)
    spec = SyntheticVQA(training_turns=most_turns)
    for _ in range(200):
        questions = ask(rng, draw_scene(rng, spec), spec)
        records = training_records(rng, "images/scene.png", questions, most_turns)
        asked = [
            [turn["value"].removeprefix("<image>\n") for turn in record["conversations"][::2]]
            if "conversations" in record
            else [record["question"]]
            for record in records
        ]
        assert sorted(q for texts in asked for q in texts) == sorted(q.question for q in questions), "each once"
        per_group = [sum(1 for q in questions if q.group == group and not q.alone) for group in (0, 1)]
        alone = {q.question for q in questions if q.alone}
        assert len(records) == sum(-(-n // most_turns) for n in per_group) + len(alone), "full conversations"
        assert {q for texts in asked if len(texts) == 1 for q in texts} >= alone, "mcq and location asked alone"
        conditional = {q.question for q in questions if q.conditional}
        for texts in asked:
            assert 1 <= len(texts) <= most_turns
            flags = [text in conditional for text in texts]
            assert flags == sorted(flags), f"a question about what the scene holds before one every scene gets: {texts}"
            assert not any(pair <= set(texts) for pair in GIVE_EACH_OTHER_AWAY), texts


def test_synthetic_conversations_of_no_turns_are_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="training_turns=0"):
        SyntheticVQA(num_images=4, training_turns=0).write(tmp_path)


def test_loaders_pad_training_right_and_ask_every_evaluation_turn_once_padded_left(synthetic_cache: Path):
    spec = SyntheticVQA(num_images=24, image_size=32, conversation_fraction=0.5)
    data = datamodule(
        synthetic_cache,
        synthetic_cache,
        cache_dir=str(synthetic_cache),
        synthetic=vars(spec),
        format="jsonl",
        max_length=384,
        batch_size=8,
    )
    data.prepare_data()
    data.setup("fit")
    train = next(iter(data.train_dataloader()))
    assert len(train) == 8 and (train.attention_mask[:, 0] == 1).all()
    val = data.catalog.splits["val"]
    batches = list(data.val_dataloader())
    assert sum(len(batch) for batch in batches) == sum(len(r.turns) for r in val)
    assert all((batch.attention_mask[:, -1] == 1).all() for batch in batches)
    assert data.context().majority_answers == data.catalog.majority
    assert data.context().question_prior == data.catalog.question_prior and data.catalog.question_prior


def test_length_grouped_order_is_a_seeded_permutation_of_sorted_batches():
    lengths = [int(n) for n in np.random.default_rng(0).choice([60, 90, 140], size=1000)]
    order = list(LengthGroupedShuffle(lengths, batch_size=10, seed=3))
    assert sorted(order) == list(range(1000))
    again, other = LengthGroupedShuffle(lengths, 10, seed=3), LengthGroupedShuffle(lengths, 10, seed=3)
    other.set_epoch(1)
    assert list(again) == order and list(other) != order
    batches = [[lengths[i] for i in order[start : start + 10]] for start in range(0, 1000, 10)]
    mixed = sum(len(set(batch)) > 1 for batch in batches)
    # Three lengths in mega-batches of 250 (a quarter of the order): at most two mixed batches in each.
    assert mixed <= 8, mixed


def test_grouped_training_batches_pad_less_and_hold_every_record_once(synthetic_cache: Path):
    spec = SyntheticVQA(num_images=60, image_size=32)
    arguments = dict(cache_dir=str(synthetic_cache), synthetic=vars(spec), format="jsonl", batch_size=8)

    def padding(group_by_length: bool) -> tuple[float, list[str]]:
        data = datamodule(synthetic_cache, synthetic_cache, group_by_length=group_by_length, **arguments)
        data.prepare_data()
        data.setup("fit")
        batches = list(data.train_dataloader())
        real = sum(batch.attention_mask.sum().item() for batch in batches)
        padded = sum(batch.attention_mask.numel() for batch in batches)
        return 1 - real / padded, [sample for batch in batches for sample in batch.id]

    grouped, grouped_ids = padding(True)
    shuffled, shuffled_ids = padding(False)
    assert sorted(grouped_ids) == sorted(set(grouped_ids)) and len(grouped_ids) == len(shuffled_ids)
    assert grouped < shuffled / 2, (grouped, shuffled)


# Bad input: each kind gets one line naming the file and the line or record.


def test_malformed_jsonl_line_names_its_line_number(tmp_path: Path):
    good = {"image": "a.png", "question": "Is there a polyp?", "answer": "yes"}
    message = read_error(tmp_path, [good, good, '{"image": "a.png", "question": "Is it?", "answer": '])
    assert message.endswith("train.jsonl:line 3: malformed JSON: Expecting value (fix the line)")


def test_missing_image_names_the_record(tmp_path: Path):
    message = read_error(tmp_path, [{"image": "gone.png", "question": "Is there a polyp?", "answer": "yes"}])
    assert message.endswith(
        "train.jsonl:line 1: missing image file: images/gone.png not found (add the image, or fix data.image_dir)"
    )


def test_empty_answer_is_refused(tmp_path: Path):
    message = read_error(tmp_path, [{"image": "a.png", "question": "Is there a polyp?", "answer": "  "}])
    assert message.endswith("train.jsonl:line 1: empty answer (give the record an 'answer' text, or drop it)")


def test_unknown_question_type_in_config_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"^data\.question_types\[1\]\.type='colour' is not a question type; valid: yes_no"
    ):
        QuestionTypeRules([{"type": "yes_no", "pattern": "^is"}, {"type": "colour", "pattern": "colou?r"}])
    with pytest.raises(ConfigError, match=r"^data\.candidates\.counting='counting' is not a question type"):
        build_candidates({"counting": ["1"]}, [])


def test_unknown_question_type_in_a_record_names_it(tmp_path: Path):
    record = {"image": "a.png", "question": "Is it?", "answer": "yes", "question_type": "boolean"}
    assert "train.jsonl:line 1: unknown question type 'boolean' (use one of yes_no, color" in read_error(
        tmp_path, [record]
    )


def test_conversation_that_does_not_alternate_is_refused(tmp_path: Path):
    conversation = [{"from": "human", "value": "Is there a polyp?"}, {"from": "human", "value": "Where?"}]
    message = read_error(tmp_path, [{"image": "a.png", "conversations": conversation}])
    assert message.endswith(
        "train.jsonl:line 1: conversation does not alternate: message 1 is from 'human', expected 'gpt' "
        "(human and gpt messages must alternate, starting with human)"
    )


def test_conversation_ending_on_a_human_turn_is_refused(tmp_path: Path):
    conversation = [
        {"from": "human", "value": "Is there a polyp?"},
        {"from": "gpt", "value": "yes"},
        {"from": "human", "value": "Where?"},
    ]
    message = read_error(tmp_path, [{"image": "a.png", "conversations": conversation}])
    assert message.endswith(
        "train.jsonl:line 1: conversation ends on a human turn (end it with the gpt answer, or drop the question)"
    )


def test_image_path_escaping_the_image_root_is_refused(tmp_path: Path):
    (tmp_path / "secret.png").write_bytes(b"")
    message = read_error(tmp_path, [{"image": "../secret.png", "question": "Is there a polyp?", "answer": "yes"}])
    assert "train.jsonl:line 1: path '../secret.png' escapes the data root" in message


def test_image_in_two_split_files_is_refused(tmp_path: Path):
    record = {"image": "a.png", "question": "Is there a polyp?", "answer": "yes"}
    root = split_files(tmp_path, {"train": [record], "val": [record], "test": []})
    splits = {split: reader(root).read_jsonl(root / f"{split}.jsonl") for split in ("train", "val", "test")}
    with pytest.raises(
        DataError, match=r"val\.jsonl:line 1: image in two splits: 'a\.png' is in val here and in train"
    ):
        check_disjoint(splits)


def test_answer_outside_its_candidates_is_refused(tmp_path: Path):
    record = {"image": "a.png", "question": "Pick", "answer": "green", "answer_candidates": ["red", "blue"]}
    assert "answer 'green' is not among answer_candidates" in read_error(tmp_path, [record])


def test_skip_policy_skips_and_counts_bad_records(tmp_path: Path):
    write_images(tmp_path / "images", ["a.png"])
    rows = [
        {"image": "a.png", "question": "Is there a polyp?", "answer": "yes"},
        {"image": "a.png", "question": "Is there a polyp?", "answer": ""},
        "not json",
        {"image": "nope.png", "question": "Is there a polyp?", "answer": "no"},
    ]
    records_reader = reader(tmp_path, on_error="skip")
    records = records_reader.read_jsonl(write_jsonl(tmp_path / "train.jsonl", rows))
    assert len(records) == 1
    assert records_reader.policy.skipped_by_reason() == {
        "empty answer": 1,
        "malformed JSON": 1,
        "missing image file": 1,
    }


def test_each_image_of_the_table_is_found_once_however_many_questions_ask_about_it(tmp_path: Path, monkeypatch):
    write_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    with (tmp_path / "kvasir_vqa.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_id", "question", "answer", "source"])
        writer.writerows([[img_id, "Is there text?", "no", "hyperkvasir"] for img_id in "ab" * 9])
    resolved = []
    original = data_module.resolve_under
    monkeypatch.setattr(data_module, "resolve_under", lambda *args: resolved.append(args[1]) or original(*args))
    records = reader(tmp_path).read_csv(tmp_path / "kvasir_vqa.csv")
    assert len(records) == 18 and resolved == ["a.jpg", "b.jpg"]
    images = {(tmp_path / "images" / name).resolve() for name in ("a.jpg", "b.jpg")}
    assert {record.path for record in records} == images


def test_decoded_images_are_kept_until_the_budget_is_full(tmp_path: Path, monkeypatch):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    opened = []
    original = images_module.open_for_processor
    monkeypatch.setattr(
        images_module, "open_for_processor", lambda path, *a: opened.append(path.name) or original(path, *a)
    )
    # Room for two 8 x 8 RGB images: the third is decoded every time it is asked for.
    images = DecodedImages(image_processor=None, budget_bytes=2 * 8 * 8 * 3)
    for _ in range(3):
        for name in ("a.png", "b.png", "c.png"):
            assert images(tmp_path / name).getpixel((0, 0)) == Image.open(tmp_path / name).getpixel((0, 0))
    assert opened == ["a.png", "b.png", "c.png", "c.png", "c.png"]
    assert images.kept_bytes == 2 * 8 * 8 * 3


def test_a_negative_image_cache_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^data\.image_cache_mb=-1: "):
        datamodule(tmp_path, tmp_path, image_cache_mb=-1)


def test_scenes_drawn_in_processes_are_the_ones_drawn_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = SyntheticVQA(num_images=12, image_size=32)
    for kind in ("serial", "pool"):
        (tmp_path / kind).mkdir()
    spec.write(tmp_path / "serial")
    monkeypatch.setattr(synthetic, "POOL_MIN_SCENES", 4)
    monkeypatch.setattr(synthetic, "available_cpus", lambda: 2)
    spec.write(tmp_path / "pool")
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "serial" / name).read_text() == (tmp_path / "pool" / name).read_text()
    images = sorted(path.name for path in (tmp_path / "serial" / "images").iterdir())
    assert len(images) == 12 and images == sorted(path.name for path in (tmp_path / "pool" / "images").iterdir())
    for name in images:
        serial, pool = (np.asarray(Image.open(tmp_path / kind / "images" / name)) for kind in ("serial", "pool"))
        assert np.array_equal(serial, pool), name


def test_a_single_polyps_cell_is_drawn_uniformly_and_asked_only_where_it_could_be_elsewhere():
    rng = np.random.default_rng(0)
    spec = SyntheticVQA()
    cells: dict[int, Counter] = {mm: Counter() for mm in (4, 8, 15, 25)}
    for _ in range(8000):
        scene = draw_scene(rng, spec)
        asked = {q.question: q.answer for q in ask(rng, scene, spec)}
        if len(scene.polyps) == 1:
            cells[scene.polyp_mm][location(*scene.polyps[0])] += 1
            assert ("Where in the image is the polyp?" in asked) == (scene.polyp_mm != 25)
    # 9 cells for the small polyps, the 6 above the instruments for 15 mm, only the centre for 25 mm.
    for mm, expected in ((4, 9), (8, 9), (15, 6)):
        counts = np.array(list(cells[mm].values()))
        assert len(counts) == expected and counts.min() > 0.6 * counts.mean(), (mm, cells[mm])
    assert set(cells[25]) == {"center"}


def test_a_polyps_highlight_faces_the_light_at_the_image_centre():
    radius = 15 / FIELD_OF_VIEW_MM / 2
    for x, y in ((0.25, 0.25), (0.75, 0.5), (0.5, 0.5)):
        scene = Scene("colonoscopy", "red", 15, ((x, y),), "silver", "polyp snare", ())
        image = render(np.random.default_rng(0), scene, 192).astype(int)
        rows, columns = np.nonzero(image.min(axis=2) > 200)
        shift = np.array([columns.mean() / 192 - x, rows.mean() / 192 - y]) / radius
        towards_centre = np.array([0.5 - x, 0.5 - y])
        if not towards_centre.any():
            assert np.hypot(*shift) < 0.1, shift
            continue
        cosine = shift @ towards_centre / (np.hypot(*shift) * np.hypot(*towards_centre))
        assert cosine > 0.95 and 0.3 < np.hypot(*shift) < 0.7, (x, y, shift)
