"""The training loader: an order fixed by (seed, epoch), mid-epoch continuation, augmentation seeded per sample."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, Dataset, SequentialSampler

from vigil.core import data as core_data
from vigil.core.data import TaskDataModule, resolve_pin_memory, resolve_workers
from vigil.core.errors import ConfigError
from vigil.core.loading import ResumableLoader, SampleKey, SeededSamples
from vigil.core.randomness import RandomState, random_state, set_random_state
from vigil.core.sampling import EpochShuffle


class Augmented(Dataset):
    """Index plus one draw of each generator an augmentation may use (torch, NumPy, Python)."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index, torch.randint(10**6, ()).item(), np.random.randint(10**6), random.randrange(10**6)])


def loader(workers: int = 0, seed: int = 3) -> ResumableLoader:
    return ResumableLoader(
        SeededSamples(Augmented(), seed),
        batch_size=3,
        sampler=EpochShuffle(20, seed),
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )


def epoch(data: ResumableLoader, number: int) -> list[torch.Tensor]:
    data.sampler.set_epoch(number)
    return list(data)


def test_epoch_shuffle_is_a_function_of_seed_and_epoch_alone():
    torch.manual_seed(0)
    first = list(EpochShuffle(50, seed=1))
    torch.manual_seed(99)
    assert list(EpochShuffle(50, seed=1)) == first, "the global random state must not matter"
    assert sorted(first) == list(range(50))
    later = EpochShuffle(50, seed=1)
    later.set_epoch(1)
    assert list(later) != first and list(EpochShuffle(50, seed=2)) != first


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_restored_mid_epoch_yields_the_rest_of_that_epoch(workers: int):
    uninterrupted = loader(workers)
    epoch(uninterrupted, 0)
    reference = epoch(uninterrupted, 1)

    killed = loader(workers)
    killed.sampler.set_epoch(1)
    batches = iter(killed)
    done = [next(batches) for _ in range(2)]
    state = killed.state_dict()
    assert state == {"epoch": 1, "batches": 2}

    resumed = loader(workers)
    resumed.load_state_dict(state)
    rest = epoch(resumed, 1)
    assert len(rest) == len(reference) - 2
    assert all(torch.equal(a, b) for a, b in zip(done + rest, reference, strict=True))
    # The next epoch starts at its beginning.
    assert len(epoch(resumed, 2)) == len(reference)


def test_a_saved_position_of_another_epoch_is_not_skipped():
    data = loader()
    data.load_state_dict({"epoch": 0, "batches": 6})
    assert len(epoch(data, 1)) == 6


def test_samples_do_not_depend_on_the_worker_count_and_leave_torch_and_python_state_alone():
    torch.manual_seed(0)
    before = random_state()
    single = epoch(loader(0), 0)
    after = random_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    parallel = epoch(loader(2), 0)
    assert all(torch.equal(a, b) for a, b in zip(single, parallel, strict=True))
    draws = torch.cat(single)[:, 1:]
    assert len(set(draws[:, 0].tolist())) > len(draws) // 2, "each sample gets its own draws"


def test_another_seed_gives_another_order_and_other_draws():
    assert not torch.equal(torch.cat(epoch(loader(seed=3), 0)), torch.cat(epoch(loader(seed=4), 0)))


def test_without_a_sampler_epoch_the_iterations_are_counted():
    data = ResumableLoader(
        SeededSamples(Augmented(), 0), batch_sampler=BatchSampler(SequentialSampler(range(20)), 5, False)
    )
    first, second = list(data), list(data)
    assert torch.equal(torch.cat(first)[:, 0], torch.cat(second)[:, 0])
    assert not torch.equal(torch.cat(first)[:, 1], torch.cat(second)[:, 1]), "augmentation differs by epoch"


def test_seeded_samples_take_sample_keys():
    samples = SeededSamples(Augmented(), 0)
    assert torch.equal(samples[SampleKey(4, 11)], samples[SampleKey(4, 11)])
    assert samples[SampleKey(4, 11)][0] == 4


def test_the_random_state_survives_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    path = tmp_path / "state.ckpt"
    torch.save({"state": RandomState().state_dict()}, path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    callback = RandomState()
    callback.load_state_dict(torch.load(path, weights_only=True)["state"])
    callback.on_train_start(None, None)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_validation_does_not_move_the_training_random_state():
    callback = RandomState()
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    callback.on_validation_start(None, None)
    torch.rand(100), np.random.rand(3)
    callback.on_validation_end(None, None)
    assert torch.equal(torch.rand(2), expected)


def test_set_random_state_restores_what_random_state_took():
    state = random_state()
    first = torch.rand(4)
    set_random_state(state)
    assert torch.equal(torch.rand(4), first)


# --- workers and pinning chosen from the machine --------------------------------------------------


class Squares(TaskDataModule):
    """The smallest DataModule: every split the same 20 augmented indices."""

    batch_type = None

    def read(self) -> None:
        pass

    def dataset(self, split: str) -> Dataset:
        return Augmented()

    def collate(self, split: str):
        return torch.stack

    def audit(self, masking):
        return None


@pytest.mark.parametrize(
    ("cpus", "ranks", "expected"), [(2, 1, 1), (16, 1, 8), (16, 2, 7), (8, 4, 1), (1, 1, 0), (4, 8, 0)]
)
def test_auto_workers_are_this_ranks_share_of_the_cpus_less_one(monkeypatch, cpus, ranks, expected):
    monkeypatch.setattr(core_data, "available_cpus", lambda: cpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert resolve_workers("auto") == expected
    assert resolve_workers(3) == 3


@pytest.mark.parametrize("bad", [-1, "four", 1.5, True])
def test_a_worker_count_that_is_not_one_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"data\.num_workers"):
        resolve_workers(bad)


def test_auto_pin_memory_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_pin_memory("auto") is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_pin_memory("auto") is False
    assert resolve_pin_memory(True) is True
    with pytest.raises(ConfigError, match=r"data\.pin_memory"):
        resolve_pin_memory("yes")


def test_only_the_training_loader_keeps_its_workers_between_passes(tmp_path):
    data = Squares(tmp_path, batch_size=4, num_workers=2)
    assert data.loader("train").persistent_workers
    assert not data.loader("val").persistent_workers
    assert not data.loader("test").persistent_workers
    assert data.loader("val").num_workers == 2
