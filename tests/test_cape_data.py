"""MP-100 data: checked annotations, one-line errors for each kind of bad input, episodes, crops and batches."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vigil.core.errors import ConfigError, DataError
from vigil.core.files import RecordPolicy
from vigil.tasks.cape.data import CapeDataModule, collate_episodes, read_split_file, split_file_path
from vigil.tasks.cape.episodes import (
    Episode,
    EpisodeDataset,
    TrainingEpisodes,
    crop_matrix,
    crop_view,
    evaluation_episodes,
)
from vigil.tasks.cape.masking import AllKeypointsMasking, VisibleMasking
from vigil.tasks.cape.module import scored_keypoints
from vigil.tasks.cape.records import CapeBatch, CapeContext, Instance

CATEGORIES = [
    {"id": 7, "name": "cat_face", "keypoints": ["left_eye", "right_eye", "nose"], "skeleton": [[0, 1], [1, 2]]},
    {"id": 9, "name": "chair", "keypoints": ["seat", "back"], "skeleton": [[0, 1]]},
]


def annotation(ann_id: int, image_id: int, category_id: int, keypoints: list, bbox=None) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox or [4.0, 6.0, 20.0, 16.0],
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
    }


def mp100_content() -> dict:
    images = [
        {"id": i, "file_name": f"{'cat_face' if i < 4 else 'chair'}/{i:03d}.jpg", "width": 32, "height": 32}
        for i in range(1, 7)
    ]
    annotations = [annotation(100 + i, i, 7, [8.0, 10.0, 2, 20.0, 10.0, 1, 14.0, 18.0, 0]) for i in range(1, 4)]
    annotations += [annotation(100 + i, i, 9, [10.0, 20.0, 2, 12.0, 8.0, 2]) for i in range(4, 7)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_file(root: Path, content: dict, name: str = "train") -> Path:
    for image in content["images"]:
        path = root / "images" / image["file_name"]
        if ".." not in image["file_name"]:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * image["id"], 90, 160)).save(path)
    path = split_file_path(root, "annotations", 1, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def read(root: Path, path: Path, on_error: str = "raise"):
    return read_split_file(path, root, "images", RecordPolicy(on_error))


def test_annotations_are_read_with_keypoints_visibility_and_skeleton(tmp_path: Path):
    path = write_file(tmp_path, mp100_content())
    split = read(tmp_path, path)
    assert split.used_categories == [7, 9]
    assert split.categories[7].keypoint_names == ("left_eye", "right_eye", "nose")
    assert split.categories[7].skeleton == ((0, 1), (1, 2))
    first = split.instances[0]
    assert first.annotation_id == 101 and first.path == (tmp_path / "images/cat_face/001.jpg").resolve()
    np.testing.assert_array_equal(first.keypoints, [[8, 10], [20, 10], [14, 18]])
    np.testing.assert_array_equal(first.visibility, [2, 1, 0])
    assert split.instances_by_category == {7: [0, 1, 2], 9: [3, 4, 5]}


def test_one_based_coco_skeleton_is_detected(tmp_path: Path):
    content = mp100_content()
    content["categories"][0] = {**CATEGORIES[0], "skeleton": [[1, 2], [2, 3]]}
    split = read(tmp_path, write_file(tmp_path, content))
    assert split.categories[7].skeleton == ((0, 1), (1, 2))


def broken(change) -> dict:
    content = copy.deepcopy(mp100_content())
    change(content)
    return content


def set_annotation(field: str, value):
    def change(content: dict) -> None:
        content["annotations"][1][field] = value

    return change


BAD_INPUTS = {
    "keypoints_wrong_length": (
        set_annotation("keypoints", [8.0, 10.0, 2, 20.0, 10.0, 1]),
        "annotation 102: keypoints of the wrong length: 6 values, category 'cat_face' has 3 keypoints (9 values) "
        "(the keypoint and visibility arrays must match the category; fix the annotation)",
    ),
    "visibility_outside_0_1_2": (
        set_annotation("keypoints", [8.0, 10.0, 2, 20.0, 10.0, 3, 14.0, 18.0, -1]),
        "annotation 102: visibility outside {0, 1, 2}: [-1.0, 3.0] (category 'cat_face') "
        "(use 0 unlabelled, 1 occluded, 2 visible)",
    ),
    "unknown_category": (
        set_annotation("category_id", 42),
        "annotation 102: unknown category: category_id 42 is not in categories[] (fix it)",
    ),
    "unknown_image": (
        set_annotation("image_id", 999),
        "annotation 102: unknown image: image_id 999 is not in images[] (category 'cat_face') (fix it)",
    ),
    "zero_bbox": (
        set_annotation("bbox", [4.0, 6.0, 0.0, 16.0]),
        "annotation 102: invalid bbox [4.0, 6.0, 0.0, 16.0]: width and height must be positive (category "
        "'cat_face') (fix it)",
    ),
    "negative_bbox": (
        set_annotation("bbox", [4.0, 6.0, 20.0, -3.0]),
        "annotation 102: invalid bbox [4.0, 6.0, 20.0, -3.0]: width and height must be positive (category "
        "'cat_face') (fix it)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_annotation_is_one_line_naming_file_annotation_and_category(tmp_path: Path, case: str):
    change, expected = BAD_INPUTS[case]
    path = write_file(tmp_path, broken(change))
    with pytest.raises(DataError) as caught:
        read(tmp_path, path)
    assert str(caught.value) == f"{path}:{expected}"


def test_missing_image_is_one_line_naming_the_annotation(tmp_path: Path):
    path = write_file(tmp_path, mp100_content())
    (tmp_path / "images/cat_face/002.jpg").unlink()
    with pytest.raises(DataError) as caught:
        read(tmp_path, path)
    assert str(caught.value) == (
        f"{path}:annotation 102: missing image file: images/cat_face/002.jpg not found (category 'cat_face') "
        "(add it or fix data.root)"
    )


def test_file_name_escaping_the_data_root_is_rejected(tmp_path: Path):
    content = broken(lambda c: c["images"][1].update(file_name="../../etc/passwd"))
    path = write_file(tmp_path, content)
    with pytest.raises(DataError) as caught:
        read(tmp_path, path)
    message = str(caught.value)
    assert message.startswith(f"{path}:annotation 102: path '../../etc/passwd' escapes the data root ")
    assert message.endswith("(fix the path in the file)") and "\n" not in message


def test_malformed_json_names_the_line(tmp_path: Path):
    path = split_file_path(tmp_path, "annotations", 1, "train")
    path.parent.mkdir(parents=True)
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DataError) as caught:
        read(tmp_path, path)
    assert str(caught.value) == f"{path}:line 2: malformed JSON: Expecting value (fix or re-download the file)"


def test_skip_policy_counts_the_bad_annotation_and_keeps_the_rest(tmp_path: Path):
    path = write_file(tmp_path, broken(set_annotation("keypoints", [1.0, 2.0, 2])))
    split = read(tmp_path, path, on_error="skip")
    assert [i.annotation_id for i in split.instances] == [101, 103, 104, 105, 106]
    assert split.policy.skipped_by_reason() == {"keypoints of the wrong length": 1}


def test_crop_carries_keypoints_through_the_same_affine_and_back():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    instance = Instance(
        1, 7, Path("x.jpg"), (10.0, 5.0, 20.0, 10.0), np.array([[12.0, 7.0], [25.0, 13.0]]), np.array([2, 1])
    )
    view = crop_view(image, instance, 32, 1.25)
    assert view.image.shape == (3, 32, 32)
    matrix = crop_matrix(instance.bbox, 32, 1.25)
    expected = (np.c_[instance.keypoints, np.ones(2)] @ matrix[:2].T) / 32
    np.testing.assert_allclose(view.keypoints.numpy(), expected, rtol=1e-5)
    back = view.keypoints.double() @ view.crop_to_original[:, :2].double().T + view.crop_to_original[:, 2].double()
    np.testing.assert_allclose(back.numpy(), instance.keypoints, atol=1e-3)


def test_crop_centres_the_padded_bbox():
    matrix = crop_matrix((10.0, 20.0, 40.0, 20.0), 64, 1.25)
    centre = matrix @ np.array([30.0, 30.0, 1.0])
    right_edge = matrix @ np.array([50.0, 30.0, 1.0])
    np.testing.assert_allclose(centre[:2], [32, 32])
    # The longer side (40 px) padded by 1.25 fills the crop: half of it is 32 / 1.25 crop pixels.
    np.testing.assert_allclose(right_edge[0] - 32, 32 / 1.25)


def test_keypoint_pushed_out_of_the_crop_stops_counting():
    image = Image.new("RGB", (64, 64))
    keypoints = np.array([[20.0, 20.0], [60.0, 20.0], [0.0, 0.0]])
    instance = Instance(1, 7, Path("x.jpg"), (10.0, 10.0, 20.0, 20.0), keypoints, np.array([2, 2, 0]))
    view = crop_view(image, instance, 32, 1.25)
    assert view.visibility.tolist() == [2, 0, 0]
    assert view.keypoints[1, 0] > 1, "its coordinates are kept; only its visibility changes"


def members() -> dict[int, list[int]]:
    return {3: list(range(0, 6)), 5: list(range(6, 10)), 8: [10]}


def test_training_episodes_are_class_balanced_distinct_and_redrawn_each_epoch():
    sampler = TrainingEpisodes(members(), shots=2, length=600, seed=1)
    first = list(sampler)
    assert first == list(sampler), "the same epoch gives the same episodes (every DDP rank agrees)"
    sampler.set_epoch(1)
    assert list(sampler) != first
    counts = {category: sum(e.category_id == category for e in first) for category in (3, 5, 8)}
    assert counts[8] == 0, "a category with fewer than shots+1 instances forms no episode"
    assert 250 < counts[3] < 350 and 250 < counts[5] < 350
    for episode in first:
        indices = [*episode.supports, episode.query]
        assert len(set(indices)) == 3 and set(indices) <= set(members()[episode.category_id])


def test_evaluation_episodes_are_fixed_seeded_and_distinct():
    items = evaluation_episodes(members(), shots=1, queries=3, episodes=4, seed=0)
    assert items == evaluation_episodes(members(), shots=1, queries=3, episodes=4, seed=0)
    assert items != evaluation_episodes(members(), shots=1, queries=3, episodes=4, seed=1)
    assert sum(e.category_id == 3 for e in items) == 4 * 3 and sum(e.category_id == 5 for e in items) == 4 * 3
    assert all(e.category_id != 8 for e in items)
    # One episode's queries are consecutive items sharing its supports.
    for start in range(0, len(items), 3):
        episode = items[start : start + 3]
        queries, supports = {item.query for item in episode}, set(episode[0].supports)
        assert len(queries) == 3 and not queries & supports and all(set(i.supports) == supports for i in episode)


def test_batches_pad_keypoints_with_a_validity_mask(tmp_path: Path):
    split = read(tmp_path, write_file(tmp_path, mp100_content()))
    dataset = EpisodeDataset(split.instances, split.categories, 32, augment=None)
    batch = collate_episodes([dataset[Episode(7, (0,), 1)], dataset[Episode(9, (3,), 4)]])
    assert batch.support_images.shape == (2, 1, 3, 32, 32) and batch.query_keypoints.shape == (2, 3, 2)
    assert batch.keypoint_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.query_visibility.tolist() == [[2, 1, 0], [2, 2, 0]]
    assert batch.support_weights.tolist() == [[[1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]]]
    assert batch.query_keypoints_original[0].tolist() == [[8, 10], [20, 10], [14, 18]]
    assert batch.category_name == ["cat_face", "chair"] and batch.annotation_id.tolist() == [102, 105]
    weight = VisibleMasking()(batch.query_visibility, batch.support_visibility, batch.keypoint_mask)
    assert weight.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]


def test_synthetic_data_has_disjoint_category_splits_read_by_the_real_loader(synthetic_cache: Path):
    spec = {"num_categories": 8, "val_categories": 2, "test_categories": 2, "instances_per_category": 4}
    module = CapeDataModule(str(synthetic_cache), image_size=32, shots=1, queries=2, episodes=2, synthetic=spec)
    module.prepare_data()
    module.setup()
    used = {split: set(file.used_categories) for split, file in module.files.items()}
    assert [len(used[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    assert not (used["train"] & used["val"]) and not (used["train"] & used["test"]) and not (used["val"] & used["test"])
    content = json.loads((module.data_root / "annotations/mp100_split1_train.json").read_text())
    visibility = np.array([v for a in content["annotations"] for v in a["keypoints"][2::3]])
    assert set(visibility.tolist()) == {0, 1, 2}
    unlabelled = [
        a["keypoints"][i : i + 2]
        for a in content["annotations"]
        for i in range(0, len(a["keypoints"]), 3)
        if a["keypoints"][i + 2] == 0
    ]
    assert all(point == [0.0, 0.0] for point in unlabelled), "unlabelled keypoints stored at 0,0 as COCO does"
    batch = next(iter(module.val_dataloader()))
    assert batch.query_images.shape[1:] == (3, 32, 32) and torch.isfinite(batch.query_keypoints).all()


def data_module(tmp_path: Path, val_content: dict | None = None) -> CapeDataModule:
    """A DataModule on a data root whose train split is `mp100_content()`, its val and test `val_content`."""
    write_file(tmp_path, mp100_content(), "train")
    other = val_content or {"images": [], "annotations": [], "categories": CATEGORIES}
    write_file(tmp_path, other, "val")
    write_file(tmp_path, other, "test")
    return CapeDataModule(
        str(tmp_path), image_size=32, shots=1, queries=2, episodes=2, episodes_per_epoch=20, batch_size=4
    )


def audit_of(tmp_path: Path, masking, val_content: dict | None = None):
    """The audit of `data_module(tmp_path, val_content)`."""
    return data_module(tmp_path, val_content).audit(masking)


def test_training_dataset_holds_the_first_epoch_of_the_sampler_that_draws_the_batches(tmp_path: Path):
    module = data_module(tmp_path)
    dataset = module.dataset("train")
    batches = module.training_batches(dataset)
    assert batches["batch_size"] == 4 and batches["drop_last"] is True
    # `overfit_batches` reads the dataset by index: it must see the episodes the sampler draws in epoch 0.
    assert dataset.episodes == list(batches["sampler"]) and len(dataset) == 20
    loader = module.train_dataloader()
    assert isinstance(loader.sampler, TrainingEpisodes)
    batch = next(iter(loader))
    assert isinstance(batch, CapeBatch) and len(batch) == 4
    assert module.collate("val") is collate_episodes


def test_context_names_every_category_of_every_split(tmp_path: Path):
    assert data_module(tmp_path).context() == CapeContext({7: "cat_face", 9: "chair"})


def test_missing_split_file_is_one_line_naming_it(tmp_path: Path):
    write_file(tmp_path, mp100_content(), "train")
    module = CapeDataModule(str(tmp_path))
    with pytest.raises(DataError) as caught:
        module.setup()
    path = split_file_path(tmp_path, "annotations", 1, "val")
    assert str(caught.value) == f"{path}: file not found (check data.root and data.split)"


def test_audit_counts_visibility_per_category_and_warns_when_masking_trains_unlabelled_keypoints(tmp_path: Path):
    visible = audit_of(tmp_path, VisibleMasking())
    assert [visible.splits[split]["samples"] for split in ("train", "val", "test")] == [6, 0, 0]
    cat_face = visible.splits["train"]["per_category"]["cat_face"]
    assert cat_face == {
        "instances": 3,
        "keypoints": 3,
        "v0": 3,
        "v1": 3,
        "v2": 3,
        "labelled_fraction": pytest.approx(2 / 3),
        "visible_fraction": pytest.approx(1 / 3),
    }
    assert visible.splits["train"]["unlabelled_supervised_per_episode"] == 0
    assert not [w for w in visible.warnings if "unlabelled keypoints" in w]
    naive = audit_of(tmp_path, AllKeypointsMasking())
    assert naive.splits["train"]["unlabelled_supervised_per_episode"] > 0
    assert [w for w in naive.warnings if w.startswith("train: masking=AllKeypointsMasking trains")]


def test_audit_refuses_a_category_in_two_splits_and_splits_without_episodes(tmp_path: Path):
    report = audit_of(tmp_path, VisibleMasking(), val_content=mp100_content())
    assert (
        "category 'cat_face' (id 7) has instances in both train and val: CAPE splits must be category-disjoint "
        "(check data.split and the files)"
    ) in report.errors
    empty = audit_of(tmp_path / "empty", VisibleMasking())
    assert [e for e in empty.errors if e.startswith("val: no category has shots+1=2 instances")]


def test_keypoint_labelled_outside_the_crop_is_scored_but_carries_no_loss(tmp_path: Path):
    content = mp100_content()
    # The bbox [4, 6, 20, 16] padded 1.25 spans x in [1.5, 26.5]: a keypoint at x = 30 falls outside the crop.
    content["annotations"][1]["keypoints"][6:9] = [30.0, 14.0, 2]
    split = read(tmp_path, write_file(tmp_path, content))
    dataset = EpisodeDataset(split.instances, split.categories, 32, augment=None)
    batch = collate_episodes([dataset[Episode(7, (2,), 1)]])
    split.instances[2].visibility[2] = 2
    batch_labelled_support = collate_episodes([dataset[Episode(7, (2,), 1)]])
    assert batch.query_visibility.tolist() == [[2, 1, 0]], "outside the crop: no loss"
    assert batch.query_annotated_visibility.tolist() == [[2, 1, 2]]
    assert scored_keypoints(batch).tolist() == [[True, True, False]], "the support does not label it"
    assert scored_keypoints(batch_labelled_support).tolist() == [[True, True, True]]
    weight = VisibleMasking()(
        batch_labelled_support.query_visibility, batch_labelled_support.support_visibility, batch.keypoint_mask
    )
    assert weight.tolist() == [[1.0, 1.0, 0.0]]
    assert batch.query_keypoints_original[0, 2].tolist() == [30.0, 14.0]


def test_cross_supercategory_preset_reads_its_annotation_files_under_the_root(tmp_path: Path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    content = mp100_content()
    for image in content["images"]:
        image["file_name"] = f"images/{image['file_name']}"
        path = tmp_path / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (40 * image["id"], 90, 160)).save(path)
    folder = tmp_path / "cross_category_annotations"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / f"fewshot_{name}_furniture.json").write_text(json.dumps(content))
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", ["experiment=mp100_cross_category", f"data.root={tmp_path}", "supercategory=furniture"])
    module = instantiate(cfg.data)
    module.setup()
    assert {name: file.file.name for name, file in module.files.items()} == {
        "train": "fewshot_train_furniture.json",
        "val": "fewshot_test_furniture.json",
        "test": "fewshot_test_furniture.json",
    }
    assert len(module.files["test"].instances) == 6
    # Validation and test reading one file are one split for the disjointness check, said in a warning.
    report = module.audit(VisibleMasking())
    assert not [error for error in report.errors if "both val and test" in error]
    assert [warning for warning in report.warnings if warning.startswith("test reads the same file as val")]


def test_annotation_files_must_name_the_three_splits_and_stay_under_the_root(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.annotation_files names \['train'\]"):
        CapeDataModule(str(tmp_path), annotation_files={"train": "a.json"})
    outside = {"train": "../a.json", "val": "a.json", "test": "a.json"}
    with pytest.raises(DataError, match="escapes the data root"):
        CapeDataModule(str(tmp_path), annotation_files=outside).setup()
