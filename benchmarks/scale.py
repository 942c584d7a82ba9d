"""Real size: what vigil's audit, start-up, memory and training loader cost on corpora of the real data sets' size.

For each task and each size (a fraction of the real data set: 10%, 30%, 100% by default), on the corpora of
`scale_data.py` (real formats, real image sizes, cached under `outputs/cache`):
- `vigil-audit` wall seconds and the peak resident memory of its process tree;
- `vigil-train` seconds to the first training step and the peak memory of the whole process tree (loader
  workers included) over a short run with the real-data preset's defaults: resident (RSS, which counts pages
  the workers share with their parent once in each) and proportional (PSS, shared pages divided among those
  who share them: what the tree really holds);
- the leakage check's perceptual hashing of every image, with an empty hash cache;
- the training DataLoader's samples/s against a plain loop that decodes the same files with PIL and resizes them
  to the same input size with the loader's resampling filter (the limit a loader can reach here), with 0 and 2
  workers.
Each cost is then judged linear or not in the data size: its growth from the smallest to the largest size
against the data's growth.
"""

from __future__ import annotations

import json
import math
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
from torchvision.transforms.functional import pil_modes_mapping

from benchmarks.common import REPO_ROOT, Row
from benchmarks.scale_data import TASKS, corpus_root
from vigil.core.leakage import split_leakage

NAME = "scale"
CACHE = REPO_ROOT / "outputs" / "cache"
# The real-data preset of each task, run on CPU with nothing downloaded (random weights, the tiny VLM).
PRESETS = {
    "seg": ["task=segmentation", "data=kvasir_seg"],
    "contrastive": ["task=contrastive", "data=flickr30k"],
    "cape": ["task=cape", "data=mp100"],
    "vqa": ["task=vqa", "data=kvasir_vqa", "model=tiny_llava", "data.annotation_file=kvasir_vqa.csv"],
}
# A short run: the first step is what is timed; one validation batch after it starts the evaluation loader's
# workers beside the training loader's, which is when memory peaks.
TRAIN_OVERRIDES = ["logger=csv", "++trainer.max_steps=1", "++trainer.val_check_interval=1", "run_test=false"]
TRAIN_OVERRIDES += ["++trainer.limit_val_batches=1", "++trainer.num_sanity_val_steps=0", "preflight=false"]
TRAIN_OVERRIDES += ["++trainer.enable_progress_bar=false"]
LOADER_BATCHES = 6
GENERATED_QUESTIONS = 64
# A cost within this factor of its linear prediction is linear (or better).
LINEAR_SLACK = 1.25


@dataclass
class Measured:
    """Wall seconds, peak resident and proportional bytes of one command's process tree, its exit status and its
    output."""

    seconds: float
    peak_rss: int
    peak_pss: int
    returncode: int
    stdout: str

    def failure(self) -> str:
        """'' when the command succeeded, else its exit status and the last line it printed."""
        if self.returncode == 0:
            return ""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        return f"exit {self.returncode}: {lines[-1][:160] if lines else ''}"


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """Resident and proportional bytes of a process and all its descendants."""
    rss = pss = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            memory = member.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + memory.rss, pss + memory.pss
    return rss, pss


def measure(command: Sequence[str]) -> Measured:
    """Run `command`, sampling its process tree's memory every 100 ms."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak, done = psutil.Process(process.pid), [0, 0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                rss, pss = tree_memory(watched)
            except psutil.Error:
                return
            peak[:] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    done.set()
    sampler.join()
    return Measured(time.perf_counter() - start, peak[0], peak[1], process.returncode, stdout)


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
        run_record = Path(run_dir) / "run.json"
        first_step = json.loads(run_record.read_text())["first_step_seconds"] if run_record.is_file() else None
    return float("nan") if first_step is None else float(first_step), measured


def composed(task: str, root: Path, extra: Sequence[str]) -> tuple[Any, Any]:
    """The run's config as `vigil-train` composes it for the corpus, and its DataModule, set up."""
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose("train", [*PRESETS[task], f"data.root={root}", *extra], return_hydra_config=True)
    data = instantiate(config.data)
    data.prepare_data()
    data.setup()
    return config, data


@dataclass
class SampleFiles:
    """The files one training sample decodes, per sample, the size the loader resizes them to and its PIL
    resampling filter."""

    files: list[list[Path]]
    size: tuple[int, int]
    resample: int = Image.BILINEAR


def sample_files(task: str, data: Any) -> SampleFiles:
    """What the training loader of `task` decodes and how it resizes it."""
    if task == "seg":
        files = [[r.image_path, *([r.mask_path] if r.annotated else [])] for r in data.splits["train"]]
        return SampleFiles(files, data.image_size[::-1])
    if task == "contrastive":
        crop = data.dataset("train").transform.transforms[0]
        side = crop.size if isinstance(crop.size, int) else crop.size[0]
        interpolation = crop.interpolation
        # timm's random-resized crop may draw its filter per sample; the plain loop takes the first.
        interpolation = interpolation[0] if isinstance(interpolation, list | tuple) else interpolation
        resample = pil_modes_mapping[interpolation]
        return SampleFiles([[path] for path in data.image_files("train")], (side, side), resample)
    if task == "cape":
        paths = [instance.path for instance in data.files["train"].instances]
        group = data.shots + 1
        groups = [paths[i : i + group] for i in range(0, len(paths) - group + 1, group)]
        return SampleFiles(groups, (data.image_size,) * 2)
    processor = data.encoder.processor.image_processor
    side = processor.crop_size["height"]
    return SampleFiles([[record.path] for record in data.catalog.splits["train"]], (side, side))


class PlainImages(Dataset):
    """The plain pipeline: decode each file of a sample with PIL and resize it, as a float tensor."""

    def __init__(self, samples: SampleFiles) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples.files)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        tensors = []
        for path in self.samples.files[index]:
            with Image.open(path) as image:
                resized = image.convert("RGB").resize(self.samples.size, self.samples.resample)
            tensors.append(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float())
        return tensors


def endless(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (a small corpus has fewer batches than are timed)."""
    while True:
        yield from loader


def samples_per_second(loader: DataLoader, batch_size: int) -> float:
    """Samples/s over `LOADER_BATCHES` batches, after a first batch that starts the workers; the workers are
    ended after (a later loader's forked workers must not inherit them)."""
    batches = endless(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(LOADER_BATCHES):
        next(batches)
    seconds = time.perf_counter() - start
    batches.close()
    if getattr(loader, "_iterator", None) is not None:
        loader._iterator._shutdown_workers()
        loader._iterator = None
    return LOADER_BATCHES * batch_size / seconds


def loader_ratios(task: str, data: Any) -> dict[str, tuple[float, float]]:
    """(vigil's training loader, the plain loop) samples/s by worker count, and with no workers and the
    augmentation off (what the loader's own machinery costs, beside the augmentation's work)."""
    samples = sample_files(task, data)
    results = {}
    for workers, augment in ((0, data.augment), (2, data.augment), (0, False if data.augment is True else None)):
        data.num_workers, kept, data.augment = workers, data.augment, augment
        label = f"{workers} workers" if augment is kept else f"{workers} workers, no augmentation"
        ours = samples_per_second(data.train_dataloader(), data.batch_size)
        data.augment = kept
        plain = DataLoader(PlainImages(samples), data.batch_size, shuffle=True, num_workers=workers)
        results[label] = (ours, samples_per_second(plain, data.batch_size))
    return results


def hashing_seconds(data: Any) -> tuple[float, int]:
    """Seconds the leakage check takes to hash every image of every split with an empty cache, and how many."""
    files = {split: data.image_files(split) for split in ("train", "val", "test")}
    with tempfile.TemporaryDirectory(prefix="vigil-scale-hashes-") as cache:
        start = time.perf_counter()
        split_leakage(files, data.data_root, Path(cache), max_distance=10)
        seconds = time.perf_counter() - start
    return seconds, len({path for paths in files.values() for path in paths})


def records(task: str, root: Path) -> int:
    """The size of the corpus in its own unit: images (segmentation, retrieval, VQA) or instances (CAPE)."""
    if task == "cape":
        return sum(len(json.loads(p.read_text())["annotations"]) for p in (root / "annotations").glob("*.json"))
    folder = {"seg": "images", "contrastive": "flickr30k-images", "vqa": "images"}[task]
    return sum(1 for _ in (root / folder).iterdir())


def linearity(values: dict[float, float], sizes: dict[float, int]) -> str:
    """`linear` when the cost at the largest size is no more than LINEAR_SLACK times the straight line through
    the two smallest sizes predicts (a fixed start-up cost makes a linear cost grow slower than the data)."""
    if any(math.isnan(value) for value in values.values()):
        return "failed at some size"
    if len(values) < 2:
        return "one size"
    fractions = sorted(values)
    first, second, last = fractions[0], fractions[1], fractions[-1]
    slope = (values[second] - values[first]) / (sizes[second] - sizes[first])
    predicted = values[first] + max(slope, 0.0) * (sizes[last] - sizes[first]) if last != second else values[second]
    growth, data_growth = values[last] / max(values[first], 1e-9), sizes[last] / sizes[first]
    if len(fractions) == 2:
        predicted = values[first] * data_growth
    verdict = "linear" if values[last] <= LINEAR_SLACK * predicted else "SUPERLINEAR"
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
    config, data = composed(task, root, extra)
    print(f"[scale] {label}: image hashes ...", file=sys.stderr, flush=True)
    hashing, hashed = hashing_seconds(data)
    loaders = loader_ratios(task, data)
    costs = {
        "audit s": audited.seconds if not audited.returncode else math.nan,
        "first step s": first_step,
        "leakage hashing s": hashing,
        "audit peak RSS": audited.peak_rss / 2**30,
        "train peak RSS": trained.peak_rss / 2**30,
        "train peak PSS": trained.peak_pss / 2**30,
    }
    print(f"[scale] {label}: audit {audited.seconds:.1f}s, first step {first_step:.1f}s, {loaders}", file=sys.stderr)
    unit = "instances" if task == "cape" else "images"
    audit_note = audited.failure() or f"{size} {unit}"
    train_note = trained.failure() or f"run {trained.seconds:.0f}s"
    rows = [
        Row(NAME, f"{label} audit", audited.seconds, "s", "<= 60 at 100%", audit_note),
        Row(NAME, f"{label} audit peak RSS", audited.peak_rss / 2**30, "GiB"),
        Row(NAME, f"{label} first step", first_step, "s", "<= 60 at 100%", train_note),
        Row(NAME, f"{label} train peak RSS (tree)", trained.peak_rss / 2**30, "GiB"),
        Row(NAME, f"{label} train peak PSS (tree)", trained.peak_pss / 2**30, "GiB"),
        Row(NAME, f"{label} leakage hashing, empty cache", hashing, "s", "", f"{hashed} images"),
    ]
    for workers, (ours, plain) in loaders.items():
        note = f"{ours:.1f} vs plain {plain:.1f} samples/s"
        rows.append(Row(NAME, f"{label} loader / plain, {workers}", ours / plain, "x", ">= 0.9", note))
    if task == "vqa":
        print(f"[scale] {label}: generation ...", file=sys.stderr, flush=True)
        rows += generation_rows(label, config, data)
    return size, costs, rows


def generation_rows(label: str, config: Any, data: Any) -> list[Row]:
    """Questions/s of vigil's batched evaluation decoding against one `generate` call per question, on the same
    validation questions and model, free and constrained, and how many answers agree."""
    from vigil.tasks.vqa.decoding import Decoder

    model = instantiate(config.model).eval()
    dataset, collate = data.dataset("val"), data.collate("val")
    samples = [dataset[index] for index in range(min(GENERATED_QUESTIONS, len(dataset)))]
    batch_size = data.batch_size
    rows = []
    for decoding in ("free", "constrained"):
        decoder = Decoder(decoding, config.task.module.max_new_tokens, data.context().answer_format)
        with torch.no_grad():
            start = time.perf_counter()
            batched = [
                a
                for i in range(0, len(samples), batch_size)
                for a in decoder(model, collate(samples[i : i + batch_size]))
            ]
            middle = time.perf_counter()
            plain = [answer for sample in samples for answer in decoder(model, collate([sample]))]
            end = time.perf_counter()
        same = sum(a == b for a, b in zip(batched, plain, strict=True)) / len(samples)
        ours, theirs = len(samples) / (middle - start), len(samples) / (end - middle)
        note = f"{ours:.1f} vs {theirs:.1f} questions/s, batches of {batch_size}; {same:.0%} same answers"
        rows.append(Row(NAME, f"{label} {decoding} generation / per-question loop", ours / theirs, "x", "> 1", note))
    return rows


def scale(args: Any) -> list[Row]:
    """The table over the chosen tasks and sizes, with a linearity verdict per task and cost (each task's rows
    printed as soon as they are measured)."""
    from benchmarks.run import render

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
        print(render([row for row in rows if row.metric.startswith(task)]), file=sys.stderr, flush=True)
    return rows
