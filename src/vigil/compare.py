"""`vigil-compare DIR`: compare the runs under a directory (usually a multirun sweep).

Prints a table of final metrics with the overrides that distinguish the runs as columns, writes it as
`DIR/comparison.md`, and draws the training curves of every run into `DIR/curves.png`. With `--group-by KEYS`,
or by default when the runs differ in a replicate key (seed, MP-100's split), runs are grouped and every metric
is the mean +- sample std over the group's finished runs, with n; the curves are the group means with a band.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
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
    # From run.json: running, finished or failed, and a failed run's one-line reason.
    status: str = "unknown"
    reason: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the run wrote its `metrics.json`."""
        return bool(self.metrics)

    @property
    def state(self) -> str:
        """What the table shows for a run without metrics: `failed (<reason>)` or `not finished`."""
        if self.status == "failed":
            return f"failed ({self.reason})" if self.reason else "failed"
        return "not finished"


# Keys whose values replicate one experiment: by default, runs that differ only in these are one group.
REPLICATE_KEYS = ("seed", "data.split")


def find_runs(root: Path) -> list[RunResult]:
    """Every run under `root`: a directory with `.hydra/overrides.yaml`, ordered by path."""
    runs = []
    for overrides_file in sorted(root.glob("**/.hydra/overrides.yaml"), key=_natural_key):
        run_dir = overrides_file.parent.parent
        overrides = dict(_split_override(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        record_file = run_dir / "run.json"
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        status = record.get("status") or ("finished" if metrics else "unknown")
        runs.append(RunResult(run_dir, overrides, metrics, _monitor(run_dir), status, record.get("reason")))
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
            rows.append([*values, *([run.state] + ["-"] * (len(metrics) - 1))[: len(metrics)]])
            continue
        rows.append([*values, *(f"{run.metrics[m]:.4f}" if m in run.metrics else "-" for m in metrics)])
    return rows


def default_group_keys(keys: list[str]) -> list[str] | None:
    """Group by the distinguishing keys other than the replicate ones, when some runs are replicates."""
    if not any(key in REPLICATE_KEYS for key in keys):
        return None
    return [key for key in keys if key not in REPLICATE_KEYS]


def group_runs(runs: list[RunResult], keys: list[str]) -> dict[tuple[str, ...], list[RunResult]]:
    """Runs keyed by their values of `keys`, in the order their groups first appear."""
    groups: dict[tuple[str, ...], list[RunResult]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(key, "") for key in keys), []).append(run)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), as papers report over seeds or splits."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def aggregated_rows(
    groups: dict[tuple[str, ...], list[RunResult]], metrics: list[str], sort_by: str | None
) -> list[list[str]]:
    """Per group: its key values, `n` finished runs, every metric as `mean ± std`; then a row per failed run."""
    summaries = []
    for values, members in groups.items():
        finished = [run for run in members if run.finished]
        cells = []
        for name in metrics:
            scores = [run.metrics[name] for run in finished if name in run.metrics]
            cells.append("{:.4f} ± {:.4f}".format(*mean_std(scores)) if scores else "-")
        best = mean_std([run.metrics[sort_by] for run in finished if sort_by in run.metrics] or [-math.inf])[0]
        summaries.append((best, [*values, str(len(finished)), *cells], members))
    if sort_by:
        summaries.sort(key=lambda summary: -summary[0])
    rows = []
    for _, row, members in summaries:
        rows.append(row)
        for run in (run for run in members if not run.finished):
            rows.append([*row[: -len(metrics) - 1], f"{run.path.name}: {run.state}", *["-"] * len(metrics)])
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


def draw_curves(groups: dict[str, list[RunResult]], path: Path) -> Path | None:
    """Plot the epoch training loss and each monitored validation metric: a line per group (its mean over its
    runs at each epoch, with a +- std band when it has several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for members in groups.values() for run in members]
    panels = ["train/loss_epoch", *sorted({run.monitor for run in runs if run.monitor})]
    curves = {run.path: read_curves(run.path) for run in runs}
    if not any(curves.values()):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, name in zip(axes[0], panels, strict=True):
        for label, members in groups.items():
            xs, means, stds = mean_curve([curves[run.path].get(name, []) for run in members])
            if not xs:
                continue
            (line,) = axis.plot(xs, means, marker=".", label=label)
            if any(stds):
                low = [m - d for m, d in zip(means, stds, strict=True)]
                high = [m + d for m, d in zip(means, stds, strict=True)]
                axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
        axis.set_title(name)
        axis.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float]]:
    """The mean and std over runs at each x (epoch) that any of them logged, from the runs that logged it."""
    by_x: dict[float, list[float]] = {}
    for points in curves:
        for x, y in points:
            by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    stats = [mean_std(by_x[x]) for x in xs]
    return xs, [mean for mean, _ in stats], [std for _, std in stats]


def curve_groups(runs: list[RunResult], keys: list[str], group_keys: list[str] | None) -> dict[str, list[RunResult]]:
    """The lines of the curves: one per group when grouping, else one per run."""
    if group_keys is None:
        return {", ".join(f"{k}={run.overrides.get(k, '')}" for k in keys) or run.path.name: [run] for run in runs}
    return {
        ", ".join(f"{k}={v}" for k, v in zip(group_keys, values, strict=True)) or "all": members
        for values, members in group_runs(runs, group_keys).items()
    }


def main(argv: list[str] | None = None) -> None:
    """Compare the runs under DIR: print the table, write comparison.md and curves.png."""
    parser = argparse.ArgumentParser(prog="vigil-compare", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a multirun directory, or any folder holding runs")
    parser.add_argument("--metrics", nargs="*", help="metric names to show (default: every val/* and test/*)")
    parser.add_argument("--sort", help="sort the rows by this metric, best first (higher is better)")
    parser.add_argument(
        "--group-by",
        help="comma-separated override keys; runs with the same values are one row of mean ± std "
        "(default: the distinguishing keys but seed and data.split, when those vary; 'none' for one row per run)",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.directory)
    if not runs:
        parser.exit(1, f"vigil-compare: no runs under {args.directory} (no .hydra/overrides.yaml found)\n")
    keys = distinguishing_keys(runs)
    metrics = args.metrics or default_metrics(runs)
    if args.group_by == "none":
        group_keys = None
    elif args.group_by is not None:
        group_keys = [key.strip() for key in args.group_by.split(",") if key.strip()]
    else:
        group_keys = default_group_keys(keys)
    if group_keys is None:
        header, rows = keys + metrics, comparison_rows(runs, keys, metrics, args.sort)
        title = f"{len(runs)} runs under {args.directory}"
    else:
        groups = group_runs(runs, group_keys)
        header, rows = [*group_keys, "n", *metrics], aggregated_rows(groups, metrics, args.sort)
        title = f"{len(runs)} runs under {args.directory} in {len(groups)} groups (mean ± std over n)"
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="left" if name not in metrics else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
    (args.directory / "comparison.md").write_text(to_markdown(header, rows))
    curves = draw_curves(curve_groups(runs, keys, group_keys), args.directory / "curves.png")
    print(f"wrote {args.directory / 'comparison.md'}" + (f" and {curves}" if curves else ""))


if __name__ == "__main__":
    main()
