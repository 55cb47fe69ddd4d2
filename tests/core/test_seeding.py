"""The seeds derived from a run's seed: recorded runs repeat only while these stay put."""
from __future__ import annotations

from robench.core.seeding import augmentation_seed, rank_noise_seed, validation_seed


def test_derived_seeds_keep_the_values_recorded_runs_drew() -> None:
    assert [augmentation_seed(s) for s in (0, 1, 5)] == [7, 1_000_040, 5_000_172]
    assert [rank_noise_seed(5, 3, rank) for rank in (0, 1)] == [5_045_018_162, 5_045_018_163]
    assert [validation_seed(5, e) for e in (1, 2)] == [500_016, 500_017]


def test_each_rank_and_epoch_draws_its_own_stream() -> None:
    seeds = {rank_noise_seed(seed, epoch, rank) for seed in range(3) for epoch in range(1, 51) for rank in range(8)}
    assert len(seeds) == 3 * 50 * 8
    assert len({validation_seed(seed, epoch) for seed in range(3) for epoch in range(1, 51)}) == 3 * 50
