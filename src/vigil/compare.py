"""`vigil-compare DIR`: compare the runs under a directory (usually a multirun sweep).

Prints a table of final metrics with the overrides that distinguish the runs as columns, writes it as
`DIR/comparison.md`, and draws the training curves of every run into `DIR/curves.png`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table


@dataclass
class RunResult:
    """One run directory: its overrides, final metrics (empty if it did not finish) and monitored metric."""

    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    monitor: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the run wrote its `metrics.json`."""
        return bool(self.metrics)


def find_runs(root: Path) -> list[RunResult]:
    """Every run under `root`: a directory with `.hydra/overrides.yaml`, ordered by path."""
    runs = []
    for overrides_file in sorted(root.glob("**/.hydra/overrides.yaml"), key=_natural_key):
        run_dir = overrides_file.parent.parent
        overrides = dict(_split_override(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        runs.append(RunResult(run_dir, overrides, metrics, _monitor(run_dir)))
    return runs


def _natural_key(path: Path) -> list[object]:
    """Sort sweep jobs 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _monitor(run_dir: Path) -> str | None:
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.exists():
        return None
    config = yaml.safe_load(config_file.read_text()) or {}
    return (config.get("task") or {}).get("monitor")


def distinguishing_keys(runs: list[RunResult]) -> list[str]:
    """Override keys whose values are not the same in every run."""
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.overrides.get(key, "") for run in runs}) > 1]


def default_metrics(runs: list[RunResult]) -> list[str]:
    """The headline metrics: every `val/<name>` and `test/<name>` (no per-class or per-type breakdowns)."""
    names = {name for run in runs for name in run.metrics if name.count("/") == 1}
    return sorted(name for name in names if name.startswith(("val/", "test/")))


def comparison_rows(runs: list[RunResult], keys: list[str], metrics: list[str], sort_by: str | None) -> list[list[str]]:
    """One row per run: its distinguishing override values, then the metrics (`-` where missing)."""
    if sort_by:
        runs = sorted(runs, key=lambda run: -run.metrics.get(sort_by, -math.inf))
    rows = []
    for run in runs:
        values = [run.overrides.get(key, "") for key in keys]
        if not run.finished:
            rows.append([*values, *(["not finished"] + ["-"] * (len(metrics) - 1))[: len(metrics)]])
            continue
        rows.append([*values, *(f"{run.metrics[m]:.4f}" if m in run.metrics else "-" for m in metrics)])
    return rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def read_curves(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Every logged series of a run's `csv/metrics.csv` as (epoch or step, value) points."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    series: dict[str, list[tuple[float, float]]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            for name, value in row.items():
                x = row["step"] if name.endswith("_step") or name.startswith("health/") else row["epoch"]
                if name in ("epoch", "step") or value in ("", None) or x in ("", None):
                    continue
                series.setdefault(name, []).append((float(x), float(value)))
    return series


def draw_curves(runs: list[RunResult], keys: list[str], path: Path) -> Path | None:
    """Plot the epoch training loss and each run's monitored validation metric, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["train/loss_epoch", *sorted({run.monitor for run in runs if run.monitor})]
    curves = {run.path: read_curves(run.path) for run in runs}
    if not any(curves.values()):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, name in zip(axes[0], panels, strict=True):
        for run in runs:
            points = curves[run.path].get(name)
            if points:
                label = ", ".join(f"{k}={run.overrides.get(k, '')}" for k in keys) or run.path.name
                axis.plot(*zip(*points, strict=True), marker=".", label=label)
        axis.set_title(name)
        axis.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    """Compare the runs under DIR: print the table, write comparison.md and curves.png."""
    parser = argparse.ArgumentParser(prog="vigil-compare", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a multirun directory, or any folder holding runs")
    parser.add_argument("--metrics", nargs="*", help="metric names to show (default: every val/* and test/*)")
    parser.add_argument("--sort", help="sort the rows by this metric, best first (higher is better)")
    args = parser.parse_args(argv)
    runs = find_runs(args.directory)
    if not runs:
        parser.exit(1, f"vigil-compare: no runs under {args.directory} (no .hydra/overrides.yaml found)\n")
    keys = distinguishing_keys(runs)
    metrics = args.metrics or default_metrics(runs)
    rows = comparison_rows(runs, keys, metrics, args.sort)
    header = keys + metrics
    table = Table(title=f"{len(runs)} runs under {args.directory}")
    for name in header:
        table.add_column(name, justify="left" if name in keys else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
    (args.directory / "comparison.md").write_text(to_markdown(header, rows))
    curves = draw_curves(runs, keys, args.directory / "curves.png")
    print(f"wrote {args.directory / 'comparison.md'}" + (f" and {curves}" if curves else ""))


if __name__ == "__main__":
    main()
