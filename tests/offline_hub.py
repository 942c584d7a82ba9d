"""A Hugging Face hub cache written by hand, so that hub ids resolve offline (HF_HUB_OFFLINE=1).

A preset names checkpoints by hub id (`bert-base-uncased`, `timm/resnet50.a1_in1k`, smp's `smp-hub/...`). The
libraries fetch them through `huggingface_hub`, which in offline mode reads `models--<org>--<name>/snapshots/
<commit>/<file>` of its cache and resolves a branch through `refs/<branch>`. Writing small checkpoints of the same
classes there lets a test run a preset through exactly the calls a real download takes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def snapshot(cache: Path, repo_id: str, revision: str = "main") -> Path:
    """The snapshot folder of `repo_id` at `revision` in `cache`, created with its ref if needed."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = revision if COMMIT.match(revision) else hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    if commit != revision:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def publish_folder(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> None:
    """Every file of a `save_pretrained` folder as `repo_id`'s snapshot."""
    target = snapshot(cache, repo_id, revision)
    for path in folder.rglob("*"):
        if path.is_file():
            (target / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.relative_to(folder))


def publish_state_dict(
    cache: Path, repo_id: str, state: dict[str, torch.Tensor], config: dict | None = None, revision: str = "main"
) -> None:
    """A state dict as `repo_id`'s `model.safetensors`, with an optional `config.json`."""
    target = snapshot(cache, repo_id, revision)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, target / "model.safetensors")
    if config is not None:
        (target / "config.json").write_text(json.dumps(config))
