import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vigil.core import synthetic
from vigil.core.errors import ConfigError, DataError
from vigil.core.synthetic import COMPLETE_MARKER, code_version
from vigil.tasks.segmentation import data as data_module
from vigil.tasks.segmentation.data import SegmentationDataModule, collate_segmentation
from vigil.tasks.segmentation.masking import AllPixelsMasking, AnnotatedOnlyMasking
from vigil.tasks.segmentation.records import SegmentationBatch
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation


def generated_root(base: Path, spec: SyntheticSegmentation) -> Path:
    """The data set of `spec` under `base`, written through the DataModule as a run writes it."""
    datamodule = SegmentationDataModule(str(base), synthetic=asdict(spec))
    datamodule.prepare_data()
    return datamodule.data_root


# seed 1 gives 5 unannotated images out of 24, 3 of them in the default train split.
SPEC = SyntheticSegmentation(num_images=24, image_size=32, seed=1)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generated_root(tmp_path_factory.mktemp("synthetic"), SPEC)


@pytest.fixture
def root(synthetic_root, tmp_path):
    """A private copy of the synthetic data set, free to break."""
    copy = tmp_path / "data"
    shutil.copytree(synthetic_root, copy)
    return copy


def make_datamodule(root, **kwargs):
    options = {"image_size": (32, 32), "batch_size": 4, "augment": [], **kwargs}
    return SegmentationDataModule(str(root), **options)


def unannotated_names(root):
    return set((root / "unannotated.txt").read_text().split())


def split_names(datamodule):
    datamodule.setup()
    return {split: [record.name for record in records] for split, records in datamodule.splits.items()}


def all_samples(datamodule):
    datamodule.setup()
    return [sample for split in ("train", "val", "test") for sample in datamodule.dataset(split)]


def record_in_split(root, split, annotated=True):
    datamodule = make_datamodule(root)
    datamodule.setup()
    return next(record for record in datamodule.splits[split] if record.annotated == annotated)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


# --- the generated data set -----------------------------------------------------------------------


def test_synthetic_spec_writes_the_kvasir_layout(tmp_path):
    spec = SyntheticSegmentation(num_images=6, image_size=32, unannotated_fraction=0.5, seed=3)
    spec.write(tmp_path / "set")
    images = sorted(p.stem for p in (tmp_path / "set" / "images").glob("*.jpg"))
    masks = sorted(p.stem for p in (tmp_path / "set" / "masks").glob("*.jpg"))
    unannotated = unannotated_names(tmp_path / "set")
    assert len(images) == 6
    assert sorted(set(masks) | unannotated) == images
    assert not set(masks) & unannotated


def test_generated_data_set_is_reused_once_complete(tmp_path):
    first = generated_root(tmp_path, SyntheticSegmentation(num_images=4, image_size=32))
    marker = (first / COMPLETE_MARKER).stat().st_mtime_ns
    second = generated_root(tmp_path, SyntheticSegmentation(num_images=4, image_size=32))
    assert first == second
    assert (second / COMPLETE_MARKER).stat().st_mtime_ns == marker
    assert json.loads((first / COMPLETE_MARKER).read_text())["num_images"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_a_changed_generator_writes_a_new_folder_instead_of_reusing_the_old(tmp_path, monkeypatch):
    first = generated_root(tmp_path, SyntheticSegmentation(num_images=4, image_size=32))
    assert json.loads((first / COMPLETE_MARKER).read_text())["code_version"] == code_version(SPEC)
    # Another source of the generator's module is another code version.
    monkeypatch.setattr(synthetic, "code_version", lambda spec: "edited")
    second = generated_root(tmp_path, SyntheticSegmentation(num_images=4, image_size=32))
    assert second != first
    assert json.loads((second / COMPLETE_MARKER).read_text())["code_version"] == "edited"


def test_datamodule_writes_and_reads_the_synthetic_set(tmp_path):
    datamodule = make_datamodule(tmp_path, synthetic={"num_images": 8, "image_size": 32, "seed": 2})
    datamodule.prepare_data()
    datamodule.setup()
    assert datamodule.data_root.parent == tmp_path
    assert (datamodule.data_root / COMPLETE_MARKER).exists()
    assert sum(len(records) for records in datamodule.splits.values()) == 8


# --- reading it back ------------------------------------------------------------------------------


def test_unannotated_images_come_back_unannotated(synthetic_root):
    samples = all_samples(make_datamodule(synthetic_root))
    unannotated = unannotated_names(synthetic_root)
    assert unannotated
    assert {s["name"] for s in samples if not s["annotated"]} == unannotated
    for sample in samples:
        has_mask_file = (synthetic_root / "masks" / f"{sample['name']}.jpg").exists()
        assert sample["annotated"] == has_mask_file, sample["name"]


def test_counts_match_the_manifest(synthetic_root):
    datamodule = make_datamodule(synthetic_root)
    report = datamodule.audit(AnnotatedOnlyMasking())
    manifest = json.loads((synthetic_root / COMPLETE_MARKER).read_text())
    totals = {key: sum(s[key] for s in report.splits.values()) for key in ("samples", "annotated", "unannotated")}
    assert totals["samples"] == manifest["num_images"] == len(list((synthetic_root / "images").glob("*.jpg")))
    assert totals["annotated"] == len(list((synthetic_root / "masks").glob("*.jpg")))
    assert totals["unannotated"] == len(unannotated_names(synthetic_root))
    assert all(s["skipped"] == 0 for s in report.splits.values())
    assert report.errors == []


def test_threshold_masks_decode_to_zero_and_one(synthetic_root):
    samples = all_samples(make_datamodule(synthetic_root))
    values = torch.unique(torch.cat([s["mask"].flatten() for s in samples if s["annotated"]]))
    assert values.tolist() == [0, 1]


def test_seeded_split_is_deterministic(synthetic_root):
    assert split_names(make_datamodule(synthetic_root, split_seed=7)) == split_names(
        make_datamodule(synthetic_root, split_seed=7)
    )


def test_seeded_split_depends_on_the_seed(synthetic_root):
    assert split_names(make_datamodule(synthetic_root, split_seed=7)) != split_names(
        make_datamodule(synthetic_root, split_seed=8)
    )


def test_seeded_split_is_disjoint_covers_all_and_follows_fractions(synthetic_root):
    splits = split_names(make_datamodule(synthetic_root, split_fractions=(0.5, 0.25, 0.25)))
    names = [name for split in splits.values() for name in split]
    assert len(names) == len(set(names))
    assert set(names) == {p.stem for p in (synthetic_root / "images").glob("*.jpg")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [12, 6, 6]


def test_split_file_assigns_the_listed_images(root):
    listed = {
        "train": ["images/scene_00003.jpg", "images/scene_00000.jpg"],
        "val": ["images/scene_00010.jpg"],
        "test": ["images/scene_00020.jpg", "images/scene_00021.jpg"],
    }
    (root / "split.json").write_text(json.dumps(listed))
    splits = split_names(make_datamodule(root, split_file="split.json"))
    assert splits == {split: [Path(path).stem for path in paths] for split, paths in listed.items()}


def test_collate_produces_a_segmentation_batch(synthetic_root):
    datamodule = make_datamodule(synthetic_root, image_size=(16, 24))
    dataset = datamodule.dataset("train")
    batch = collate_segmentation([dataset[i] for i in range(4)])
    assert isinstance(batch, SegmentationBatch)
    assert len(batch) == 4
    assert batch.image.shape == (4, 3, 16, 24) and batch.image.dtype == torch.float32
    assert batch.mask.shape == (4, 16, 24) and batch.mask.dtype == torch.int64
    assert batch.annotated.shape == (4,) and batch.annotated.dtype == torch.bool
    assert batch.name == [record.name for record in datamodule.splits["train"][:4]]


def test_dataloader_yields_segmentation_batches(synthetic_root):
    batch = next(iter(make_datamodule(synthetic_root).val_dataloader()))
    assert isinstance(batch, SegmentationBatch)
    assert batch.image.shape[1:] == (3, 32, 32)


# --- bad inputs: DataError naming the offending file ----------------------------------------------


def setup_error(root, **kwargs):
    with pytest.raises(DataError) as caught:
        make_datamodule(root, **kwargs).setup()
    return caught.value


def test_missing_mask_of_annotated_image(root):
    record = record_in_split(root, "train")
    record.mask_path.unlink()
    error = setup_error(root)
    assert str(record.image_path) in str(error)
    assert "no mask" in str(error)


def test_mask_size_differs_from_image(root):
    record = record_in_split(root, "train")
    write_png(record.mask_path, np.zeros((16, 16)))
    error = setup_error(root)
    assert str(record.mask_path) in str(error)
    assert "16x16" in str(error) and "32x32" in str(error)


def test_setup_reads_image_headers_and_decodes_only_the_masks(root, monkeypatch):
    decoded = []
    original = data_module.open_image
    monkeypatch.setattr(
        data_module, "open_image", lambda path, *a, **k: decoded.append(path) or original(path, *a, **k)
    )
    datamodule = make_datamodule(root)
    datamodule.setup()
    masks = {r.mask_path for records in datamodule.splits.values() for r in records if r.annotated}
    assert set(decoded) == masks, "images are decoded when loaded, not at setup"
    assert datamodule.audit(AnnotatedOnlyMasking()).splits["train"]["annotated"] > 0


def test_corrupt_image_file(root):
    record = record_in_split(root, "val", annotated=True)
    record.image_path.write_bytes(b"this is not a jpeg" * 10)
    error = setup_error(root)
    assert str(record.image_path) in str(error)
    assert "cannot be decoded" in str(error)


def test_index_mask_with_values_outside_the_label_set(tmp_path):
    for name in ("a", "b", "c", "d"):
        write_png(tmp_path / "images" / f"{name}.png", np.full((8, 8, 3), 120))
        write_png(tmp_path / "masks" / f"{name}.png", np.eye(8))
    write_png(tmp_path / "masks" / "c.png", np.eye(8) * 7)
    (tmp_path / "split.json").write_text(
        json.dumps({"train": ["images/a.png", "images/b.png"], "val": ["images/c.png"], "test": ["images/d.png"]})
    )
    error = setup_error(tmp_path, mask_encoding="index", num_classes=1, split_file="split.json")
    assert str(tmp_path / "masks" / "c.png") in str(error)
    assert "[7]" in str(error)


def test_empty_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    error = setup_error(tmp_path)
    assert str(tmp_path / "images") in str(error)
    assert "no image files" in str(error)


def test_split_file_path_escaping_the_data_root(root):
    write_png(root.parent / "outside.jpg", np.zeros((32, 32, 3)))
    (root / "split.json").write_text(json.dumps({"train": ["images/scene_00000.jpg", "../outside.jpg"]}))
    error = setup_error(root, split_file="split.json")
    assert f"{root / 'split.json'}:train[1]" in str(error)
    assert "escapes the data root" in str(error)


def test_malformed_split_json_names_the_line(root):
    (root / "split.json").write_text(
        '{\n  "train": ["images/scene_00000.jpg"],\n  "val": ["images/scene_00001.jpg"]\n  "test": []\n}\n'
    )
    error = setup_error(root, split_file="split.json")
    assert f"{root / 'split.json'}:line 4" in str(error)


def test_missing_split_file(root):
    error = setup_error(root, split_file="missing.json")
    assert str(root / "missing.json") in str(error)


def test_threshold_encoding_refuses_multiclass(root):
    with pytest.raises(ConfigError, match="threshold masks are binary"):
        make_datamodule(root, num_classes=3)


# --- on_error=skip: the bad record is skipped and reported, never dropped silently ----------------


def corrupt_image(record):
    record.image_path.write_bytes(b"\x00garbage" * 20)


def drop_mask(record):
    record.mask_path.unlink()


def shrink_mask(record):
    write_png(record.mask_path, np.zeros((16, 16)))


@pytest.mark.parametrize("break_record", [corrupt_image, drop_mask, shrink_mask])
def test_skip_drops_the_bad_record_and_reports_it(root, break_record):
    bad = record_in_split(root, "train")
    before = split_names(make_datamodule(root))
    break_record(bad)

    datamodule = make_datamodule(root, on_error="skip")
    after = split_names(datamodule)
    assert after["train"] == [name for name in before["train"] if name != bad.name]
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert len(all_samples(datamodule)) == SPEC.num_images - 1

    report = datamodule.audit(AnnotatedOnlyMasking())
    assert report.splits["train"]["skipped"] == 1
    assert sum(report.splits["train"]["skipped_by_reason"].values()) == 1
    assert report.splits["val"]["skipped"] == 0
    assert any(w.startswith("train: 1 records skipped") for w in report.warnings)


# --- audit ----------------------------------------------------------------------------------------


def test_audit_errors_when_every_annotated_training_mask_is_empty(root):
    for mask in (root / "masks").glob("*.jpg"):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    report = make_datamodule(root).audit(AnnotatedOnlyMasking())
    assert any("every annotated training mask is empty" in e for e in report.errors)


def test_audit_has_no_error_on_the_healthy_synthetic_set(synthetic_root):
    assert make_datamodule(synthetic_root).audit(AnnotatedOnlyMasking()).errors == []


def test_audit_warns_when_all_pixels_trains_unannotated_images(synthetic_root):
    datamodule = make_datamodule(synthetic_root)
    datamodule.setup()
    unannotated_in_train = sum(not record.annotated for record in datamodule.splits["train"])
    assert unannotated_in_train > 0
    warning = f"train: {unannotated_in_train} unannotated images will be trained as empty masks"
    assert any(w.startswith(warning) for w in datamodule.audit(AllPixelsMasking()).warnings)
    assert not any("trained as empty masks" in w for w in datamodule.audit(AnnotatedOnlyMasking()).warnings)
