"""Trusted loading: checkpoints open with tensors and plain containers only, unless the user trusts the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY, read_json
from pytorch_lightning.demos.boring_classes import BoringModel

from vigil.core.checkpoints import RunCheckpoint, check_checkpoint_folder, checkpoint_bytes, load_checkpoint
from vigil.core.errors import CheckpointError, OutputError


def test_a_checkpoint_of_tensors_and_containers_loads(tmp_path: Path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "vigil": {"overrides": ["loss=dice"], "run_id": "abc"}}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["vigil"]["overrides"] == ["loss=dice"]
    assert torch.equal(checkpoint["state_dict"]["w"], torch.ones(2))


def test_a_checkpoint_needing_arbitrary_unpickling_is_refused_in_one_line(tmp_path: Path):
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {}, "where": Path("elsewhere")}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: refused: loading it needs arbitrary unpickling (it stores pathlib.")
    assert message.endswith("with trust_checkpoint=true")
    assert "\n" not in message
    assert load_checkpoint(path, trust=True)["where"] == Path("elsewhere")


def test_a_file_that_is_not_a_checkpoint_dictionary_is_refused(tmp_path: Path):
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dictionary"):
        load_checkpoint(path)


def test_eval_and_resume_refuse_an_untrusted_checkpoint_and_eval_opens_it_when_trusted(cli, tmp_path: Path):
    run = tmp_path / "run"
    trained = cli("train", "logger=csv", "trainer.max_epochs=1", f"hydra.run.dir={run}", *TINY)
    assert trained.returncode == 0, trained.output
    shared = tmp_path / "shared.ckpt"
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["note"] = Path("from a stranger")
    torch.save(checkpoint, shared)

    refused = cli("eval", f"ckpt_path={shared}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"CheckpointError: {shared}: refused: loading it needs arbitrary unpickling")
    assert refused.stderr.count("\n") == 1, "one line, not a traceback"

    resumed = cli("train", f"ckpt_path={shared}", "logger=csv", f"hydra.run.dir={tmp_path / 'again'}", *TINY)
    assert resumed.returncode == 1
    assert resumed.stderr.startswith(f"CheckpointError: {shared}: refused:")

    trusted = cli("eval", f"ckpt_path={shared}", "trust_checkpoint=true", f"hydra.run.dir={tmp_path / 'trusted'}")
    assert trusted.returncode == 0, trusted.output
    assert read_json(tmp_path / "trusted" / "metrics.json")["test/dice"] == pytest.approx(
        read_json(run / "metrics.json")["test/dice"], abs=1e-5
    )


def test_a_checkpoint_folder_that_cannot_be_written_is_one_line(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as refused:
        check_checkpoint_folder(blocker / "checkpoints", torch.nn.Linear(2, 2))
    assert str(refused.value).startswith(f"{blocker / 'checkpoints'}: checkpoints cannot be written there (")
    assert "\n" not in str(refused.value)


def test_a_disk_without_room_for_one_checkpoint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = torch.nn.Linear(1024, 1024)
    assert checkpoint_bytes(model) == 3 * (1024 * 1024 + 1024) * 4, "weights and two optimizer moments"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 2**20))
    with pytest.raises(OutputError, match=r": 1 MiB free, one checkpoint needs about 12 MiB \("):
        check_checkpoint_folder(tmp_path, model)


def test_train_stops_before_fit_when_checkpoints_cannot_be_written(cli, tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = tmp_path / "run"
    dirpath = f"callbacks.model_checkpoint.dirpath={blocker / 'checkpoints'}"
    result = cli("train", "logger=csv", dirpath, f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 1
    assert result.stderr.startswith(f"OutputError: {blocker / 'checkpoints'}: checkpoints cannot be written there")
    assert result.stderr.count("\n") == 1, "one line, not a traceback"
    assert not (run / "metrics.json").exists() and not (run / "csv").exists(), "nothing trained"


def test_a_run_resumed_into_a_new_folder_carries_its_best_checkpoint_over(tmp_path: Path):
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    old.mkdir(parents=True)
    (old / "best.ckpt").write_bytes(b"weights")
    state = {
        "dirpath": str(old),
        "best_model_path": str(old / "best.ckpt"),
        "best_model_score": torch.tensor(0.7),
        "kth_best_model_path": str(old / "best.ckpt"),
        "kth_value": torch.tensor(0.7),
        "best_k_models": {str(old / "best.ckpt"): torch.tensor(0.7)},
        "last_model_path": str(old / "last.ckpt"),
    }
    callback = RunCheckpoint(dirpath=new, filename="best", monitor="val/dice", mode="max", save_last=True)
    callback.load_state_dict(state)
    assert (new / "best.ckpt").read_bytes() == b"weights"
    assert callback.best_model_path == str(new / "best.ckpt")
    assert callback.best_model_score == 0.7, "the score to beat is kept"
    assert callback.best_k_models == {str(new / "best.ckpt"): torch.tensor(0.7)}


class LoggingBoringModel(BoringModel):
    def validation_step(self, batch, batch_idx):
        loss = super().validation_step(batch, batch_idx)["x"]
        self.log("val/loss", loss)
        return loss


def test_step_checkpoints_refresh_last_while_the_best_is_chosen_at_validation(tmp_path: Path):
    callback = RunCheckpoint(
        dirpath=tmp_path, filename="best", monitor="val/loss", save_last=True, every_n_train_steps=1
    )
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=2,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    steps_saved = []
    original = trainer.save_checkpoint

    def recording(path, *args, **kwargs):
        steps_saved.append((Path(path).name, trainer.global_step))
        return original(path, *args, **kwargs)

    trainer.save_checkpoint = recording
    trainer.fit(LoggingBoringModel())
    assert [step for name, step in steps_saved if name == "last.ckpt"][:4] == [1, 2, 3, 4]
    assert {step for name, step in steps_saved if name == "best.ckpt"} <= {4, 8}
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["global_step"] in (4, 8)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 8
