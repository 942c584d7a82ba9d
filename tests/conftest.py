"""Shared fixtures: running vigil's command-line entry points in a scratch directory on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Small data and no progress bar: enough for every code path, fast on two CPU cores.
TINY = [
    "data.synthetic.num_images=48",
    "data.image_size=[32,32]",
    "data.batch_size=8",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@dataclass
class CliResult:
    """What a command printed and left behind."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def read_json(path: Path) -> dict:
    """Load a JSON file written by a run."""
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for generated data sets, shared by every test of the session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli(tmp_path: Path, synthetic_cache: Path):
    """Run `python -m vigil.<entry> args...` with outputs under tmp_path; returns a CliResult."""

    def run(entry: str, *args: str, timeout: int = 600, background: bool = False, env: dict | None = None):
        extra, env = env or {}, {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        # One torch thread per process: on two cores, a second thread stalls at every barrier whenever another
        # process runs (DDP ranks, the test runner), making steps many times slower.
        env.update(
            VIGIL_ROOT=str(tmp_path), VIGIL_CACHE=str(synthetic_cache), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"
        )
        # The preflight is off in the suite's runs (seconds each, ~100 runs); its own tests switch it on.
        env["VIGIL_PREFLIGHT"] = "false"
        # Test-only callbacks (killing.KillAtStep) are importable by the runs.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
        env.update(extra)
        command = [sys.executable, "-m", f"vigil.{entry}", *args]
        if background:
            return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run
