"""Flickr30k data: the three annotation formats, identity from the file, samplers, audit, and each kind of bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from transformers import AutoTokenizer

from vigil.core.errors import DataError
from vigil.core.files import RecordPolicy
from vigil.core.sampling import EpochShuffle
from vigil.tasks.contrastive.data import ContrastiveDataModule, build_catalog, find_annotation_file, read_listings
from vigil.tasks.contrastive.masking import DiagonalMasking, SameImageMasking
from vigil.tasks.contrastive.sampler import CaptionBatchSampler
from vigil.tasks.contrastive.synthetic import TEMPLATES, karpathy_record

# Real Flickr30k file names; one image has three captions, not five, and one is in the `restval` split.
ENTRIES = [
    ("1000092795.jpg", "train", [f"two young guys outside {i}" for i in range(5)]),
    ("10002456.jpg", "train", [f"workers on a building {i}" for i in range(5)]),
    ("1000268201.jpg", "train", [f"a child in a pink dress {i}" for i in range(3)]),
    ("1000344755.jpg", "val", [f"someone on a ladder {i}" for i in range(5)]),
    ("1000366164.jpg", "test", [f"two men in green shirts {i}" for i in range(5)]),
    ("1000523639.jpg", "restval", [f"two people in a field {i}" for i in range(5)]),
]
FILES = {"karpathy": "dataset_flickr30k.json", "csv": "flickr_annotations_30k.csv", "token": "results_20130124.token"}


def write_images(root: Path, names: list[str]) -> None:
    folder = root / "flickr30k-images"
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (8, 8), (30 * index, 100, 200)).save(folder / name)


def write_karpathy(root: Path, entries=ENTRIES, name: str = FILES["karpathy"]) -> Path:
    images = [karpathy_record(i, *entry) for i, entry in enumerate(entries)]
    (root / name).write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root / name


def write_csv(root: Path, entries=ENTRIES) -> Path:
    import csv

    with (root / FILES["csv"]).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["raw", "sentids", "split", "filename", "img_id"])
        for index, (filename, split, captions) in enumerate(entries):
            writer.writerow([json.dumps(captions), json.dumps(list(range(len(captions)))), split, filename, index])
    return root / FILES["csv"]


def write_token(root: Path, entries=ENTRIES) -> Path:
    lines = [f"{filename}#{n}\t{caption}" for filename, _, captions in entries for n, caption in enumerate(captions)]
    (root / FILES["token"]).write_text("\n".join(lines) + "\n")
    splits: dict[str, list[str]] = {}
    for filename, split, _ in entries:
        splits.setdefault(split, []).append(filename)
    (root / "splits.json").write_text(json.dumps(splits))
    return root / FILES["token"]


WRITERS = {"karpathy": write_karpathy, "csv": write_csv, "token": write_token}


def flickr(root: Path, format: str = "karpathy", entries=ENTRIES) -> Path:
    write_images(root, [filename for filename, _, _ in entries])
    WRITERS[format](root, entries)
    return root


def catalog_of(root: Path, format: str = "auto", on_error: str = "raise", split_file: str | None = "splits.json"):
    path, detected = find_annotation_file(root, format, None)
    policy = RecordPolicy(on_error)
    listings = read_listings(path, detected, policy, root, split_file)
    return build_catalog(path, listings, policy, root, "flickr30k-images", ("restval",))


def summary(catalog) -> dict[str, list[tuple[str, int, tuple[str, ...]]]]:
    return {
        split: sorted((r.filename, r.img_id, r.captions) for r in records) for split, records in catalog.splits.items()
    }


def datamodule(root: Path, tmp_path: Path, **overrides) -> ContrastiveDataModule:
    arguments = dict(
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        image_size=16,
        image_model="regnetx_002",
        batch_size=4,
        vocab_size=200,
    )
    return ContrastiveDataModule(**(arguments | overrides))


def data_error(tmp_path: Path, entries=ENTRIES, format: str = "karpathy") -> str:
    root = flickr(tmp_path / "data", format, entries)
    with pytest.raises(DataError) as raised:
        catalog_of(root)
    return str(raised.value)


@pytest.mark.parametrize("format", ["karpathy", "csv", "token"])
def test_each_format_reads_the_same_images_captions_and_splits(tmp_path: Path, format: str):
    expected = summary(catalog_of(flickr(tmp_path / "reference")))
    catalog = catalog_of(flickr(tmp_path / format, format))
    assert summary(catalog) == expected
    assert [len(r.captions) for r in catalog.splits["train"]] == [5, 5, 3]
    assert catalog.extra_splits == {"restval": 1}


@pytest.mark.parametrize("format", ["karpathy", "csv", "token"])
def test_format_is_detected_from_the_standard_file_name(tmp_path: Path, format: str):
    root = flickr(tmp_path, format)
    assert find_annotation_file(root, "auto", None) == (root / FILES[format], format)


def test_identity_comes_from_the_file_not_the_record_order(tmp_path: Path):
    ordered = summary(catalog_of(flickr(tmp_path / "ordered")))
    shuffled_entries = ENTRIES[:]
    random.Random(3).shuffle(shuffled_entries)
    assert summary(catalog_of(flickr(tmp_path / "shuffled", entries=shuffled_entries))) == ordered


def test_captions_of_one_image_share_its_id_in_a_batch(tmp_path: Path):
    data = datamodule(flickr(tmp_path / "data"), tmp_path, batch_size=8)
    data.setup()
    batch = next(iter(data.val_dataloader()))
    assert batch.caption_img_id.tolist() == [batch.img_id.item()] * 5
    assert batch.input_ids.shape[0] == 5 and batch.image.shape == (1, 3, 16, 16)


def test_duplicate_records_of_one_file_are_merged_and_counted(tmp_path: Path):
    entries = [*ENTRIES, ("1000092795.jpg", "train", ["one more caption"])]
    catalog = catalog_of(flickr(tmp_path, entries=entries))
    first = next(r for r in catalog.splits["train"] if r.filename == "1000092795.jpg")
    assert len(first.captions) == 6 and catalog.merged_duplicates == 1


def test_split_file_missing_an_image_counts_it_as_unassigned(tmp_path: Path):
    root = flickr(tmp_path, "token")
    (root / "splits.json").write_text(json.dumps({"train": ["1000092795.jpg"], "val": ["1000344755.jpg"]}))
    catalog = catalog_of(root)
    assert catalog.extra_splits == {"unassigned": 4}


def test_token_split_can_come_from_a_karpathy_file(tmp_path: Path):
    root = flickr(tmp_path, "token")
    write_karpathy(root, name="karpathy_splits.json")
    assert summary(catalog_of(root, split_file="karpathy_splits.json")) == summary(catalog_of(root))


def test_malformed_json_names_the_file_and_line(tmp_path: Path):
    root = flickr(tmp_path)
    (root / FILES["karpathy"]).write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DataError) as raised:
        catalog_of(root)
    path = root / FILES["karpathy"]
    assert str(raised.value) == (
        f"{path}:line 2: malformed JSON: Expecting property name enclosed in double quotes "
        "(fix or re-download the file)"
    )


def test_malformed_csv_names_the_file_and_line(tmp_path: Path):
    root = flickr(tmp_path, "csv")
    path = root / FILES["csv"]
    # An unescaped quote inside a quoted field (rows 2-7 are good, the bad one is line 8).
    path.write_text(path.read_text() + '"["a "quoted" caption"]",[0],train,x.jpg,9\n')
    with pytest.raises(DataError) as raised:
        catalog_of(root)
    assert str(raised.value) == f"{path}:line 8: malformed CSV: ',' expected after '\"' (fix the file)"


def test_csv_row_with_a_wrong_number_of_fields_names_its_line(tmp_path: Path):
    root = flickr(tmp_path, "csv")
    path = root / FILES["csv"]
    path.write_text(path.read_text() + '"[""a caption""]",[0],train\n')
    with pytest.raises(DataError, match=rf"^{path}:line 8: malformed row: wrong number of fields"):
        catalog_of(root)


def test_csv_without_a_required_column_says_which(tmp_path: Path):
    root = flickr(tmp_path, "csv")
    path = root / FILES["csv"]
    path.write_text(path.read_text().replace("raw,", "captions,", 1))
    with pytest.raises(DataError, match=rf"^{path}:line 1: missing column\(s\) \['raw'\]"):
        catalog_of(root)


def test_caption_list_that_is_not_a_list_is_refused_in_json(tmp_path: Path):
    path = write_karpathy(flickr(tmp_path))
    data = json.loads(path.read_text())
    data["images"][1]["sentences"] = "workers on a building"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as raised:
        catalog_of(tmp_path)
    assert str(raised.value) == (
        f"{path}:images[1]: captions not a list: 'sentences' is str (make it a list of {{'raw': ...}})"
    )


def test_caption_list_that_is_not_a_list_is_refused_in_csv(tmp_path: Path):
    entries = [
        (filename, split, "two young guys outside") if index == 0 else (filename, split, captions)
        for index, (filename, split, captions) in enumerate(ENTRIES)
    ]
    message = data_error(tmp_path, entries, "csv")
    assert message.endswith("line 2: captions not a list: 'raw' holds str (make 'raw' a JSON list of strings)")


def test_image_listed_but_missing(tmp_path: Path):
    root = flickr(tmp_path)
    (root / "flickr30k-images" / "10002456.jpg").unlink()
    with pytest.raises(DataError) as raised:
        catalog_of(root)
    assert str(raised.value) == (
        f"{root / FILES['karpathy']}:images[1]: missing image file: flickr30k-images/10002456.jpg not found "
        "(add the image, or fix data.root / data.image_dir)"
    )


def test_unknown_split_value(tmp_path: Path):
    entries = [*ENTRIES[:5], ("1000523639.jpg", "training", ["a caption"])]
    assert data_error(tmp_path, entries).endswith(
        "images[5]: unknown split: 'training' is not one of train, val, test, restval "
        "(fix the value, or add it to data.extra_splits to count it)"
    )


def test_image_without_captions(tmp_path: Path):
    entries = [*ENTRIES[:5], ("1000523639.jpg", "train", [])]
    assert data_error(tmp_path, entries).endswith(
        "images[5]: no captions: '1000523639.jpg' has none (add captions or drop it)"
    )


def test_path_escaping_the_data_root(tmp_path: Path):
    entries = [*ENTRIES[:5], ("../../secret.jpg", "train", ["a caption"])]
    message = data_error(tmp_path, entries)
    assert "images[5]: path 'flickr30k-images/../../secret.jpg' escapes the data root" in message
    assert message.endswith("(fix the path in the file)")


def test_image_in_two_splits(tmp_path: Path):
    entries = [*ENTRIES, ("1000092795.jpg", "test", ["again"])]
    assert "images[6]: image in two splits: '1000092795.jpg' is test here, train at images[0]" in data_error(
        tmp_path, entries
    )


def test_caption_listed_under_another_image(tmp_path: Path):
    path = write_karpathy(flickr(tmp_path))
    data = json.loads(path.read_text())
    data["images"][2]["sentences"][1]["imgid"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[2\]: caption of another image: sentences\[1\] has imgid 0"):
        catalog_of(tmp_path)


def test_malformed_token_line(tmp_path: Path):
    root = flickr(tmp_path, "token")
    path = root / FILES["token"]
    path.write_text(path.read_text() + "1000092795.jpg a caption without tab\n")
    with pytest.raises(DataError, match=rf"^{path}:line 29: malformed line: expected '<image>#<n><TAB><caption>'"):
        catalog_of(root)


def test_skip_policy_counts_bad_records_in_the_audit(tmp_path: Path):
    entries = [
        *ENTRIES,
        ("20000001.jpg", "train", ["a caption"]),
        ("20000002.jpg", "training", ["a caption"]),
        ("20000003.jpg", "train", []),
    ]
    root = flickr(tmp_path / "data", entries=entries)
    (root / "flickr30k-images" / "20000001.jpg").unlink()
    data = datamodule(root, tmp_path, on_error="skip")
    report = data.audit(SameImageMasking())
    facts = report.splits["all"]
    assert facts["skipped"] == 3
    assert facts["missing_image_files"] == 1 and facts["images_without_captions"] == 1
    assert facts["skipped_by_reason"]["unknown split"] == 1
    assert any("3 records skipped" in warning for warning in report.warnings)
    assert report.errors == []
    assert report.splits["restval"] == {"samples": 1, "used": False}
    assert report.splits["train"]["captions_per_image"] == {"3": 1, "5": 2}


def test_audit_refuses_diagonal_masking_with_k_captions(tmp_path: Path):
    data = datamodule(flickr(tmp_path / "data"), tmp_path, sampler="k_captions", k=2, batch_size=4)
    report = data.audit(DiagonalMasking())
    assert report.splits["train"]["same_image_negatives_per_batch"] > 0
    (error,) = report.errors
    assert "masking=DiagonalMasking gives each pair an id of its own" in error
    assert "same-image pairs per batch are trained as negatives" in error
    assert "(use masking=same_image, or data.sampler=unique_images)" in error


@pytest.mark.parametrize(
    ("sampler", "masking", "positives"),
    [
        ("k_captions", SameImageMasking(), 2.0),
        ("unique_images", DiagonalMasking(), 1.0),
        ("unique_images", SameImageMasking(), 1.0),
    ],
    ids=["k_captions-same_image", "unique_images-diagonal", "unique_images-same_image"],
)
def test_audit_accepts_positives_that_follow_the_image_ids(tmp_path: Path, sampler, masking, positives):
    data = datamodule(flickr(tmp_path / "data"), tmp_path, sampler=sampler, k=2, batch_size=4)
    report = data.audit(masking)
    assert report.errors == []
    assert report.splits["train"]["same_image_negatives_per_batch"] == 0
    assert report.splits["train"]["positives_per_caption"] == positives


def test_unique_images_sampler_puts_each_image_once_per_batch_and_once_per_epoch():
    images = EpochShuffle(10, seed=0)
    sampler = CaptionBatchSampler(images, 4, False, [5] * 10, "unique_images")
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and len(sampler) == 3
    assert sorted(image for batch in batches for image, _ in batch) == list(range(10))
    assert list(sampler) == batches, "an epoch's batches are a function of (seed, epoch)"
    images.set_epoch(1)
    first, second = (dict(pair for batch in epoch for pair in batch) for epoch in (batches, list(sampler)))
    assert [first[i] for i in range(10)] != [second[i] for i in range(10)], "captions are redrawn per epoch"


def test_k_captions_sampler_takes_k_different_captions_of_each_image():
    sampler = CaptionBatchSampler(range(9), 6, True, [5, 5, 5, 5, 5, 5, 5, 5, 1], "k_captions", k=3)
    batches = list(sampler)
    assert len(batches) == 4 and all(len(b) == 6 for b in batches)
    for batch in batches[:-1]:
        for image in {i for i, _ in batch}:
            captions = [c for i, c in batch if i == image]
            assert len(captions) == 3 and len(set(captions)) == 3


def test_sampler_shards_images_across_ranks():
    shards = []
    for rank in range(2):
        ranks = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=0)
        batches = list(CaptionBatchSampler(ranks, 5, True, [5] * 20, "unique_images"))
        shards.append({image for batch in batches for image, _ in batch})
        assert [len(b) for b in batches] == [5, 5]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 20


def test_tokenizer_is_trained_on_training_captions_and_loads_from_the_cache(tmp_path: Path):
    root = flickr(tmp_path / "data")
    data = datamodule(root, tmp_path)
    data.setup()
    (folder,) = (tmp_path / "cache").glob("tokenizer-*")
    assert data.context().tokenizer.name_or_path == str(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    tokens = reloaded("Two young guys outside")["input_ids"]
    assert reloaded.convert_ids_to_tokens(tokens) == ["[CLS]", "two", "young", "guys", "outside", "[SEP]"]
    again = datamodule(root, tmp_path)
    again.setup()
    assert list((tmp_path / "cache").glob("tokenizer-*")) == [folder]


def test_context_gives_the_tokenizer_and_the_validation_images_by_id(tmp_path: Path):
    data = datamodule(flickr(tmp_path / "data"), tmp_path)
    context = data.context()
    (record,) = data.catalog.splits["val"]
    assert context.val_images == {record.img_id: record.path}
    assert context.tokenizer is data.tokenizer


def test_training_batches_are_pairs_of_one_caption_per_image(tmp_path: Path):
    data = datamodule(flickr(tmp_path / "data"), tmp_path, batch_size=2, augment=False)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch.image.shape == (2, 3, 16, 16)
    assert torch.equal(batch.img_id, batch.caption_img_id)
    assert batch.input_ids.shape[0] == 2 and batch.attention_mask.shape == batch.input_ids.shape


def test_synthetic_data_is_karpathy_json_read_back_by_the_loader(tmp_path: Path):
    data = datamodule(tmp_path / "synthetic", tmp_path, synthetic={"num_images": 20, "image_size": 32})
    data.prepare_data()
    root = data.data_root
    assert (root / "dataset_flickr30k.json").is_file()
    data.setup()
    assert sum(len(records) for records in data.catalog.splits.values()) == 20
    record = data.catalog.splits["train"][0]
    assert len(set(record.captions)) == len(TEMPLATES) == 5
    with Image.open(record.path) as image:
        assert image.size == (32, 32)
    data.prepare_data()
    assert list((tmp_path / "synthetic").iterdir()) == [root], "written once"
