"""`make bench`: run the named benchmarks, print one table of their rows, write `outputs/bench/results.json`.

Every number is measured in this run on this machine; goals are stated beside ratios, never asserted, because a
shared 2-core machine is too noisy for pass/fail on absolute times. A new benchmark is a function taking the
parsed arguments and returning rows, added to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Row

Benchmark = Callable[[argparse.Namespace], list[Row]]


def train_step(args: argparse.Namespace) -> list[Row]:
    """Training-step throughput of vigil vs a plain PyTorch loop on the same model and batches."""
    # Imported on use: torch and Lightning take seconds to import, and `--only startup` needs neither.
    from benchmarks.train_step import train_step as run

    return run(args)


def startup(args: argparse.Namespace) -> list[Row]:
    """Seconds from `vigil-train` to its first training step, and to import vigil's entry module."""
    from benchmarks.startup import startup as run

    return run(args)


def retrieval(args: argparse.Namespace) -> list[Row]:
    """Retrieval-metric speed: vigil's RetrievalRecall vs a per-query sort, 5000 captions x 1000 images."""
    from benchmarks.retrieval import retrieval as run

    return run(args)


def vqa_eval(args: argparse.Namespace) -> list[Row]:
    """Per-type VQA evaluation speed: vigil's PerTypeAccuracy vs a per-answer pint reference, 20k answers."""
    from benchmarks.vqa_eval import vqa_eval as run

    return run(args)


def vqa_step(args: argparse.Namespace) -> list[Row]:
    """VQA training step with logits at the supervised tokens' positions only vs at every position."""
    from benchmarks.vqa_step import vqa_step as run

    return run(args)


def pck(args: argparse.Namespace) -> list[Row]:
    """PCK speed: vigil's vectorised CAPE PCK metric vs a per-query NumPy reference, 20k queries."""
    from benchmarks.pck import pck as run

    return run(args)


def loader(args: argparse.Namespace) -> list[Row]:
    """Training-loader cost: vigil's resumable, seeded loader vs torch's shuffled DataLoader on the same data."""
    from benchmarks.loader import loader as run

    return run(args)


def scale(args: argparse.Namespace) -> list[Row]:
    """Real size: audit, first step, memory and loader speed on realistic-size corpora of every task (minutes)."""
    from benchmarks.scale import scale as run

    return run(args)


def preflight(args: argparse.Namespace) -> list[Row]:
    """What the preflight adds to each task's default run on the embedded data (minutes: four whole runs)."""
    from benchmarks.preflight_cost import preflight_cost as run

    return run(args)


BENCHMARKS: list[tuple[str, Benchmark]] = [
    ("train_step", train_step),
    ("startup", startup),
    ("retrieval", retrieval),
    ("vqa_eval", vqa_eval),
    ("vqa_step", vqa_step),
    ("pck", pck),
    ("loader", loader),
    ("scale", scale),
    ("preflight", preflight),
]
# Long: run only when named (`--only scale`).
ON_REQUEST = {"scale", "preflight"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: which benchmarks, and how many steps, rounds and runs each measures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    names = [name for name, _ in BENCHMARKS]
    parser.add_argument("--only", action="append", choices=names, help="run only this benchmark (repeatable)")
    # A multiple of 5 keeps HealthMonitor's every-5-steps check at its true share of the timed steps.
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each side, alternated (default 5)")
    # Half the cores: with every core busy, another process on the machine stalls torch's threads at each
    # barrier (a 2 ms loss took 380 ms with 2 threads on this 2-core machine under load), burying the ratio in noise.
    threads = max(1, (os.cpu_count() or 2) // 2)
    parser.add_argument("--threads", type=int, default=threads, help=f"torch threads, both sides (default {threads})")
    parser.add_argument(
        "--startup-runs", type=int, default=3, help="vigil-train runs to take the median of (default 3)"
    )
    parser.add_argument("--scale-sizes", default="0.1,0.3,1.0", help="scale: fractions of the real sizes")
    parser.add_argument("--scale-tasks", default="seg,contrastive,cape,vqa", help="scale: the tasks measured")
    parser.add_argument(
        "--preflight-tasks", default="segmentation,contrastive,cape,vqa", help="preflight: the tasks whose run is timed"
    )
    parser.add_argument("--scale-overrides", nargs="*", default=[], help="scale: overrides for every command")
    out = REPO_ROOT / "outputs" / "bench" / "results.json"
    parser.add_argument("--out", type=Path, default=out, help="where the JSON results go (default outputs/bench/)")
    return parser.parse_args(argv)


def format_value(value: float) -> str:
    """Three significant decimals for small numbers, one for large ones."""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def render(rows: list[Row]) -> str:
    """The rows as an aligned text table."""
    header = ("benchmark", "metric", "value", "unit", "goal", "note")
    cells = [(r.benchmark, r.metric, format_value(r.value), r.unit, r.goal, r.note) for r in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header) - 1)]

    def line(values: Sequence[str]) -> str:
        aligned = [v.rjust(w) if i == 2 else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=False))]
        return "  ".join([*aligned, values[-1]]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(c) for c in cells)])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}


def write_results(path: Path, rows: list[Row], args: argparse.Namespace, seconds: float) -> None:
    """Write the rows, the arguments and the machine as JSON."""
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 1),
        "machine": machine(),
        "args": settings,
        "rows": [row.as_dict() for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks in order, print the table, write the JSON."""
    args = parse_args(argv)
    chosen = set(args.only) if args.only else {name for name, _ in BENCHMARKS} - ON_REQUEST
    selected = [(name, bench) for name, bench in BENCHMARKS if name in chosen]
    start = time.perf_counter()
    rows: list[Row] = []
    for name, bench in selected:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows += bench(args)
    seconds = time.perf_counter() - start
    print(render(rows))
    write_results(args.out, rows, args, seconds)
    print(f"\n{len(rows)} rows in {seconds:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
