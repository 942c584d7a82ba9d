"""End-to-end runs of `vigil-train task=vqa` through its command line, on the generated endoscopy questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_json

from vigil.tasks.vqa.answers import answers_match
from vigil.tasks.vqa.question_types import QUESTION_TYPES

TINY_DATA = ["task=vqa", "data.synthetic.num_images=40", "data.batch_size=8"]
TINY_VQA = [*TINY_DATA, "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
HEADLINE = {
    f"{split}/{name}"
    for split in ("val", "test")
    for name in ("acc", "acc_macro", "acc_majority", "acc_question_prior", "acc_question_prior_macro")
}


def predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def test_fast_dev_run_reports_per_type_accuracy_predictions_and_audit(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "debug=fast", "logger=csv", f"hydra.run.dir={run}", *TINY_VQA)
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert metrics.keys() >= HEADLINE
    rows = predictions(run)
    assert len(rows) == 8 and {"id", "question_type", "question", "answer", "prediction", "correct"} <= set(rows[0])
    for question_type in {row["question_type"] for row in rows}:
        assert f"test/acc/{question_type}" in metrics and f"test/acc_majority/{question_type}" in metrics
        assert f"test/acc_question_prior/{question_type}" in metrics
    assert metrics["test/acc"] == pytest.approx(sum(row["correct"] for row in rows) / len(rows))
    assert metrics["test/samples"] == len(rows)
    assert "type            count  correct  accuracy  majority   q-prior" in result.stdout
    prior = sum(answers_match(r["question_prior_answer"], r["answer"], r["question_type"]) for r in rows) / len(rows)
    assert metrics["test/acc_question_prior"] == pytest.approx(prior)
    audit = read_json(run / "audit.json")
    assert audit["errors"] == []
    train = audit["splits"]["train"]
    assert set(train["questions_per_type"]) == set(QUESTION_TYPES)
    assert train["no_supervised_tokens"] == 0 and train["answers_cut"] == 0
    assert train["candidates_per_type"]["yes_no"] == 2


def test_audit_refuses_answers_cut_by_max_length(cli, tmp_path: Path):
    result = cli("audit", "data.max_length=100", f"hydra.run.dir={tmp_path / 'audit'}", *TINY_DATA)
    assert result.returncode == 1
    assert result.stderr.startswith("AuditError: 1 audit error(s): train: ")
    assert "samples have their final answer cut by data.max_length (train.jsonl:line " in result.stderr
    assert "(raise data.max_length=100 to at least " in result.stderr
    assert result.stderr.count("\n") == 1, "one line, not a traceback"


def test_short_training_beats_the_majority_answer_on_closed_questions(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "task=vqa",
        "logger=csv",
        "data.synthetic.num_images=140",
        # 112 training images in 592 records: 74 steps an epoch, warmed up over the first 20.
        "data.batch_size=8",
        "trainer.max_epochs=6",
        "task.scheduler.num_warmup_steps=20",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.output
    closed = [row for row in predictions(run) if row["question_type"] != "open_ended"]
    accuracy = sum(row["correct"] for row in closed) / len(closed)
    majority = sum(answers_match(row["majority_answer"], row["answer"], row["question_type"]) for row in closed) / len(
        closed
    )
    assert accuracy > majority + 0.05, (accuracy, majority)
    metrics = read_json(run / "metrics.json")
    assert metrics["test/acc"] > metrics["test/acc_majority"]
    assert sorted((run / "pictures").glob("val_answers_epoch*.png"))
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "health/supervised_tokens" in header and "val/acc/yes_no" in header


def test_overfit_failure_points_at_label_masking(cli, tmp_path: Path):
    # A learning rate of zero cannot memorise anything: the check must fail, and say where to look.
    result = cli(
        "train",
        "debug=overfit",
        "logger=csv",
        "trainer.max_epochs=2",
        "task.optimizer.lr=0",
        f"hydra.run.dir={tmp_path}",
        *TINY_VQA,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("SanityOverfitError: debug=overfit: train/loss_epoch reached ")
    assert "check the label masking: audit.json supervised_fraction_by_type" in last


@pytest.mark.slow
def test_overfit_memorises_64_samples(cli, tmp_path: Path):
    result = cli("train", "debug=overfit", "logger=csv", f"hydra.run.dir={tmp_path}", *TINY_VQA[:2], *TINY_VQA[3:])
    assert result.returncode == 0, result.output
    assert "sanity overfit passed" in result.output
