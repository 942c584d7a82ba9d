"""Real size: what vigil's audit, start-up, memory and training loader cost on corpora of the real data sets' size.

For each task and each size (a fraction of the real data set: 10%, 30%, 100% by default), on the corpora of
`scale_data.py` (real formats, real image sizes, cached under `outputs/cache`):
- `vigil-audit` wall seconds and the peak resident memory of its process tree;
- `vigil-train` seconds to the first training step and the peak resident memory of the whole process tree
  (loader workers included) over a short run with the real-data preset's defaults;
- the training DataLoader's samples/s against a plain loop that decodes the same files with PIL and resizes them
  to the same input size (the limit a loader can reach here), with 0 and 2 workers.
Each cost is then judged linear or not in the data size: its growth from the smallest to the largest size
against the data's growth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import REPO_ROOT, Row
from benchmarks.scale_data import TASKS, corpus_root

NAME = "scale"
CACHE = REPO_ROOT / "outputs" / "cache"
# The real-data preset of each task, run on CPU with nothing downloaded (random weights, the tiny VLM).
PRESETS = {
    "seg": ["task=segmentation", "data=kvasir_seg"],
    "contrastive": ["task=contrastive", "data=flickr30k"],
    "cape": ["task=cape", "data=mp100"],
    "vqa": ["task=vqa", "data=kvasir_vqa", "model=tiny_llava", "data.annotation_file=kvasir_vqa.csv"],
}
# A short run: the first step is what is timed; two steps and one validation batch give every loader's workers
# time to start.
TRAIN_OVERRIDES = ["logger=csv", "++trainer.max_steps=2", "++trainer.limit_val_batches=1", "run_test=false"]
TRAIN_OVERRIDES += ["preflight=false", "++trainer.enable_progress_bar=false", "++trainer.num_sanity_val_steps=1"]
LOADER_BATCHES = 6
# A cost whose growth is within this factor of the data's growth is linear (or better).
LINEAR_SLACK = 1.5


@dataclass
class Measured:
    """Wall seconds and peak resident bytes of one command's process tree, and its output."""

    seconds: float
    peak_rss: int
    stdout: str


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(command: Sequence[str]) -> Measured:
    """Run `command`, sampling its process tree's resident memory every 50 ms; raise when it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak, done = psutil.Process(process.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], tree_rss(watched))
            except psutil.Error:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-3000:]}")
    return Measured(time.perf_counter() - start, peak[0], stdout)


def script(name: str) -> list[str]:
    """A console script beside this interpreter."""
    return [str(Path(sys.executable).parent / name)]


def audit(task: str, root: Path, extra: Sequence[str]) -> Measured:
    """`vigil-audit` of the corpus."""
    with tempfile.TemporaryDirectory(prefix="vigil-scale-") as run_dir:
        command = [*script("vigil-audit"), *PRESETS[task], f"data.root={root}", *extra]
        return measure([*command, f"hydra.run.dir={run_dir}"])


def train(task: str, root: Path, extra: Sequence[str]) -> tuple[float, Measured]:
    """A short `vigil-train` on the corpus: seconds to its first step (from run.json), and the whole run."""
    with tempfile.TemporaryDirectory(prefix="vigil-scale-") as run_dir:
        command = [*script("vigil-train"), *PRESETS[task], f"data.root={root}", *TRAIN_OVERRIDES, *extra]
        measured = measure([*command, f"hydra.run.dir={run_dir}"])
        record = json.loads((Path(run_dir) / "run.json").read_text())
    return float(record["first_step_seconds"]), measured


def datamodule(task: str, root: Path, extra: Sequence[str]) -> Any:
    """The task's DataModule as `vigil-train` composes it for the corpus, set up."""
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose("train", [*PRESETS[task], f"data.root={root}", *extra], return_hydra_config=True)
    data = instantiate(config.data)
    data.prepare_data()
    data.setup()
    return data


def sample_files(task: str, data: Any) -> tuple[list[list[Path]], tuple[int, int]]:
    """The files one training sample decodes, per sample, and the size the loader resizes them to."""
    if task == "seg":
        files = [[r.image_path, *([r.mask_path] if r.annotated else [])] for r in data.splits["train"]]
        return files, data.image_size[::-1]
    if task == "contrastive":
        size = data.dataset("train").transform.transforms[0].size
        side = size if isinstance(size, int) else size[0]
        return [[path] for path in data.image_files("train")], (side, side)
    if task == "cape":
        paths = [instance.path for instance in data.files["train"].instances]
        group = data.shots + 1
        return [paths[i : i + group] for i in range(0, len(paths) - group + 1, group)], (data.image_size,) * 2
    side = data.encoder.processor.image_processor.crop_size["height"]
    return [[record.path] for record in data.catalog.splits["train"]], (side, side)


class PlainImages(Dataset):
    """The plain pipeline: decode each file of a sample with PIL and resize it, as a float tensor."""

    def __init__(self, files: list[list[Path]], size: tuple[int, int]) -> None:
        self.files = files
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        tensors = []
        for path in self.files[index]:
            with Image.open(path) as image:
                resized = image.convert("RGB").resize(self.size, Image.BILINEAR)
            tensors.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float())
        return tensors


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (a small corpus has fewer batches than are timed)."""
    while True:
        yield from loader


def samples_per_second(loader: DataLoader, batch_size: int) -> float:
    """Samples/s over `LOADER_BATCHES` batches, after a first batch that starts the workers."""
    batches = endless(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(LOADER_BATCHES):
        next(batches)
    return LOADER_BATCHES * batch_size / (time.perf_counter() - start)


def loader_ratios(task: str, root: Path, extra: Sequence[str]) -> dict[int, tuple[float, float]]:
    """(vigil's training loader, the plain loop) samples/s by worker count."""
    data = datamodule(task, root, extra)
    files, size = sample_files(task, data)
    results = {}
    for workers in (0, 2):
        data.num_workers = workers
        ours = samples_per_second(data.train_dataloader(), data.batch_size)
        plain = DataLoader(PlainImages(files, size), data.batch_size, shuffle=True, num_workers=workers)
        results[workers] = (ours, samples_per_second(plain, data.batch_size))
    return results


def records(task: str, root: Path) -> int:
    """The size of the corpus in its own unit: images (segmentation, retrieval, VQA) or instances (CAPE)."""
    if task == "cape":
        return sum(len(json.loads(p.read_text())["annotations"]) for p in (root / "annotations").glob("*.json"))
    folder = {"seg": "images", "contrastive": "flickr30k-images", "vqa": "images"}[task]
    return sum(1 for _ in (root / folder).iterdir())


def linearity(values: dict[float, float], sizes: dict[float, int]) -> str:
    """`linear` when the cost grows no faster than the data (within LINEAR_SLACK), else how much faster."""
    if len(values) < 2:
        return "one size"
    small, large = min(values), max(values)
    data_growth = sizes[large] / sizes[small]
    growth = values[large] / max(values[small], 1e-9)
    verdict = "linear" if growth <= data_growth * LINEAR_SLACK else "SUPERLINEAR"
    return f"{verdict}: x{growth:.1f} for x{data_growth:.1f} data"


def scale_rows(task: str, fraction: float, extra: Sequence[str]) -> tuple[int, dict[str, float], list[Row]]:
    """Every measurement of one task at one size."""
    print(f"[scale] {task} at {fraction:.0%}: corpus ...", file=sys.stderr, flush=True)
    root = corpus_root(CACHE, task, fraction)
    size = records(task, root)
    label = f"{task} {fraction:.0%}"
    print(f"[scale] {label}: audit ...", file=sys.stderr, flush=True)
    audited = audit(task, root, extra)
    print(f"[scale] {label}: train ...", file=sys.stderr, flush=True)
    first_step, trained = train(task, root, extra)
    print(f"[scale] {label}: loaders ...", file=sys.stderr, flush=True)
    loaders = loader_ratios(task, root, extra)
    costs = {"audit s": audited.seconds, "first step s": first_step}
    print(f"[scale] {label}: audit {audited.seconds:.1f}s, first step {first_step:.1f}s, {loaders}", file=sys.stderr)
    rows = [
        Row(NAME, f"{label} audit", audited.seconds, "s", "<= 60 at 100%", f"{size} records"),
        Row(NAME, f"{label} audit peak RSS", audited.peak_rss / 2**30, "GiB"),
        Row(NAME, f"{label} first step", first_step, "s", "<= 60 at 100%", f"run {trained.seconds:.0f}s"),
        Row(NAME, f"{label} train peak RSS (tree)", trained.peak_rss / 2**30, "GiB"),
    ]
    for workers, (ours, plain) in loaders.items():
        note = f"{ours:.1f} vs plain {plain:.1f} samples/s"
        rows.append(Row(NAME, f"{label} loader / plain, {workers} workers", ours / plain, "x", ">= 0.9", note))
    return size, costs, rows


def scale(args: Any) -> list[Row]:
    """The table over the chosen tasks and sizes, with a linearity verdict per task and cost."""
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for task in args.scale_tasks.split(","):
        if task not in TASKS:
            raise SystemExit(f"--scale-tasks: {task} is not one of {', '.join(TASKS)}")
        sizes: dict[float, int] = {}
        costs: dict[str, dict[float, float]] = {}
        for fraction in (float(f) for f in args.scale_sizes.split(",")):
            sizes[fraction], measured, task_rows = scale_rows(task, fraction, args.scale_overrides)
            rows += task_rows
            for cost, value in measured.items():
                costs.setdefault(cost, {})[fraction] = value
        for cost, values in costs.items():
            rows.append(Row(NAME, f"{task} {cost} growth", values[max(values)] / values[min(values)], "x",
                            "linear", linearity(values, sizes)))  # fmt: skip
    return rows
