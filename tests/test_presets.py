"""Every `experiment=` preset trains, validates and tests: its own model names, options and data format, offline.

Each preset runs with `debug=fast` on a few samples written in its real on-disk format. Its checkpoints are
published under the preset's own hub ids in a hand-written hub cache (`offline_hub`): the same classes and
calls as a real download, with small weights (random, and smaller where a hub config sets the size).
Only the machine's parts change: `trainer=cpu` for the GPU presets, small batches and no loader workers.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from conftest import read_json
from offline_hub import publish_folder, publish_state_dict
from transformers import BertConfig, BertModel

from vigil.core.tiny import ensure_wordpiece_tokenizer
from vigil.tasks.cape.synthetic import SyntheticCape
from vigil.tasks.contrastive.synthetic import ANNOTATION_FILE, SyntheticCaptions
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation
from vigil.tasks.vqa.synthetic import SyntheticVQA
from vigil.tasks.vqa.tiny_qwen2_vl import TinyQwen2VL, ensure_tiny_qwen2_vl_checkpoint

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
MACHINE = ["trainer=cpu", "debug=fast", "data.num_workers=0", "logger=csv", "trainer.enable_progress_bar=false"]


def kvasir_seg(root: Path, hub: Path) -> list[str]:
    """Kvasir-SEG's folders, and smp's ImageNet ResNet-34 encoder at the revision smp pins."""
    SyntheticSegmentation(num_images=24, image_size=96).write(root)
    settings = smp.encoders.encoders["resnet34"]["pretrained_settings"]["imagenet"]
    encoder = smp.encoders.get_encoder("resnet34", weights=None)
    statistics = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_range": [0, 1]}
    publish_state_dict(hub, settings["repo_id"], encoder.state_dict(), statistics, settings["revision"])
    return [f"data.root={root}", "data.image_size=[64,64]", "data.batch_size=2"]


def flickr30k(root: Path, hub: Path) -> list[str]:
    """Karpathy's `dataset_flickr30k.json` with its images; a one-block ViT-B/16 and a small BERT under the
    preset's names (the tokenizer, like bert-base-uncased's, lower-cases WordPiece)."""
    SyntheticCaptions(num_images=40, image_size=64).write(root)
    image_model = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    tower = timm.create_model(image_model, pretrained=False, depth=1)
    publish_state_dict(hub, timm.models.get_pretrained_cfg(image_model).hf_hub_id, tower.state_dict())
    captions = [
        text for image in json.loads((root / ANNOTATION_FILE).read_text())["images"] for text in image["sentences"]
    ]
    tokenizer = ensure_wordpiece_tokenizer(root.parent / "tokenizers", [c["raw"] for c in captions], 200)
    text = root.parent / "bert"
    config = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(text)
    shutil.copytree(tokenizer, text, dirs_exist_ok=True)
    publish_folder(hub, "bert-base-uncased", text)
    return [f"data.root={root}", "data.batch_size=4", "+model.image_model_kwargs.depth=1"]


def mp100(root: Path, hub: Path) -> list[str]:
    """MP-100's split files and images, and timm's default ResNet-50 weights (`resnet50.a1_in1k`)."""
    SyntheticCape(num_categories=8, val_categories=2, test_categories=2, instances_per_category=6).write(root)
    backbone = timm.create_model("resnet50", pretrained=False)
    publish_state_dict(hub, timm.models.get_pretrained_cfg("resnet50").hf_hub_id, backbone.state_dict())
    return [f"data.root={root}", "data.batch_size=2", "data.image_size=64", "data.episodes=1", "data.queries=2"]


def mp100_cross_category(root: Path, hub: Path) -> list[str]:
    """CapeFormer's cross-supercategory files: one supercategory's categories held out, paths from the root."""
    arguments = mp100(root, hub)
    folder = root / "cross_category_annotations"
    folder.mkdir()
    for split, name in (("train", "fewshot_train_vehicle.json"), ("test", "fewshot_test_vehicle.json")):
        content = json.loads((root / "annotations" / f"mp100_split1_{split}.json").read_text())
        for image in content["images"]:
            image["file_name"] = f"images/{image['file_name']}"
        (folder / name).write_text(json.dumps(content))
    return [*arguments, "supercategory=vehicle"]


def kvasir_vqa(root: Path, hub: Path) -> list[str]:
    """Kvasir-VQA's one table (`img_id`, `question`, `answer`, ...) split by image, and a small Qwen2-VL-Instruct
    (same classes, processor and chat template) under the preset's hub id."""
    SyntheticVQA(num_images=30, image_size=64, training_turns=1, conversation_fraction=0.0).write(root)
    with (root / "kvasir_vqa.csv").open("w", newline="") as handle:
        table = csv.DictWriter(handle, ["image", "source", "question", "answer", "img_id"])
        table.writeheader()
        for split in ("train", "val", "test"):
            for line in (root / f"{split}.jsonl").read_text().splitlines():
                record = json.loads(line)
                img_id = Path(record["image"]).stem
                row = {"image": record["image"], "source": "synthetic", "img_id": img_id}
                table.writerow(row | {"question": record["question"], "answer": record["answer"]})
        (root / f"{split}.jsonl").unlink()
    publish_folder(hub, "Qwen/Qwen2-VL-2B-Instruct", ensure_tiny_qwen2_vl_checkpoint(root.parent, TinyQwen2VL()))
    return [f"data.root={root}", "data.annotation_file=kvasir_vqa.csv", "data.batch_size=2"]


CASES: dict[str, Callable[[Path, Path], list[str]]] = {
    "kvasir_seg": kvasir_seg,
    "flickr30k": flickr30k,
    "mp100": mp100,
    "mp100_cross_category": mp100_cross_category,
    "kvasir_vqa": kvasir_vqa,
}


def test_every_preset_has_a_case():
    """A new preset must come with its offline run here."""
    assert sorted(CASES) == PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_offline(cli, tmp_path: Path, preset: str):
    hub, data = tmp_path / "hub", tmp_path / "data"
    data.mkdir()
    arguments = CASES[preset](data, hub)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    run = tmp_path / "run"
    result = cli("train", f"experiment={preset}", *MACHINE, *arguments, f"hydra.run.dir={run}", env=offline)
    assert result.returncode == 0, result.output[-3000:]
    metrics = read_json(run / "metrics.json")
    assert any(name.startswith("test/") for name in metrics), sorted(metrics)
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values() if isinstance(value, float))
