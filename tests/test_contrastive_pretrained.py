"""A pretrained joint checkpoint (model=clip) through the command line: its zero-shot row equals the one computed
with the checkpoint's own processor and feature methods, and a short fine-tune beats it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import read_json
from PIL import Image
from transformers import AutoModel, AutoProcessor

from vigil.core.synthetic import synthetic_folder
from vigil.tasks.contrastive.pretrained import TinyClip
from vigil.tasks.contrastive.synthetic import SyntheticCaptions

IMAGES = 60
CLIP = ["task=contrastive", "model=clip", "logger=csv", "trainer.enable_progress_bar=false"]
TINY_CLIP = [*CLIP, f"data.synthetic.num_images={IMAGES}", "data.batch_size=8"]
KS = (1, 5, 10)


def reference_recalls(checkpoint: Path, data_root: Path, split: str) -> dict[str, float]:
    """R@K both ways of the checkpoint on one split of the Karpathy file, from the processor and
    `get_image_features` / `get_text_features` alone (the Flickr30k protocol: any caption of an image is a hit)."""
    model = AutoModel.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    records = [
        r for r in json.loads((data_root / "dataset_flickr30k.json").read_text())["images"] if r["split"] == split
    ]
    images = [Image.open(data_root / "flickr30k-images" / r["filename"]).convert("RGB") for r in records]
    captions = [s["raw"] for r in records for s in r["sentences"]]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r["sentences"]])
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = processor.tokenizer(captions, padding=True, return_tensors="pt")
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        text_features = model.get_text_features(**tokens).pooler_output
    similarity = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    recalls = {}
    for k in KS:
        top_captions = similarity.topk(min(k, len(captions)), dim=1).indices
        top_images = similarity.T.topk(min(k, len(records)), dim=1).indices
        recalls[f"r{k}_i2t"] = 100 * (owner[top_captions] == torch.arange(len(records))[:, None]).any(1).float().mean()
        recalls[f"r{k}_t2i"] = 100 * (top_images == owner[:, None]).any(1).float().mean()
    recalls = {name: float(value) for name, value in recalls.items()}
    recalls["rsum"] = sum(recalls.values())
    return recalls


def tiny_clip_folders(cache: Path, images: int) -> tuple[Path, Path]:
    """The tiny CLIP checkpoint and the synthetic captions a run wrote into the shared cache."""
    data = synthetic_folder(cache, "synthetic_captions", SyntheticCaptions(num_images=images))
    return synthetic_folder(cache, "tiny_clip", TinyClip()), data


def test_zero_shot_evaluation_equals_the_checkpoints_own_feature_methods(cli, tmp_path: Path, synthetic_cache: Path):
    run = tmp_path / "zero_shot"
    result = cli("eval", f"hydra.run.dir={run}", *TINY_CLIP)
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    checkpoint, data_root = tiny_clip_folders(synthetic_cache, IMAGES)
    for split in ("val", "test"):
        expected = reference_recalls(checkpoint, data_root, split)
        measured = {name: metrics[f"{split}/{name}"] for name in expected}
        assert measured == pytest.approx(expected, abs=1e-3), split
    assert read_json(run / "audit.json")["errors"] == []
    assert read_json(run / "run.json")["status"] == "finished"
    assert (run / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_short_fine_tune_beats_the_zero_shot_row(cli, tmp_path: Path, synthetic_cache: Path):
    run = tmp_path / "fine_tune"
    # The default 400 images: 60 test images make the rows of the two models differ by more than chance.
    result = cli("train", "trainer.max_epochs=4", f"hydra.run.dir={run}", *CLIP)
    assert result.returncode == 0, result.output
    checkpoint, data_root = tiny_clip_folders(synthetic_cache, SyntheticCaptions().num_images)
    zero_shot = reference_recalls(checkpoint, data_root, "test")
    assert read_json(run / "metrics.json")["test/rsum"] > zero_shot["rsum"] + 50, zero_shot
