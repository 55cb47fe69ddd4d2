"""``robench bench`` at its smallest size: correctness only, no timing asserts."""
from __future__ import annotations

import torch
from conftest import run_cli

from robench.workflows.bench import bench, defense_variant, reference_loops


def test_reference_loops_train_every_baseline() -> None:
    loops = reference_loops().REFERENCE_STEPS
    assert set(loops) == {"standard", "pgd-at", "trades", "mart"}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for name, step in loops.items():
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = step(model, opt, x, y, eps=8 / 255)
        assert torch.isfinite(loss), name
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), name  # it trained


def test_bench_times_each_defense_against_its_reference() -> None:
    rows = bench(["pgd-at", "uadat"], "smallcnn", batch_size=4, size=8, device=torch.device("cpu"),
                 repeats=1, warmup=0, peak_tflops=1.0)
    pgd, uadat = rows
    assert pgd.defense == "pgd-at" and pgd.reference_seconds and pgd.ratio == pgd.seconds / pgd.reference_seconds
    assert pgd.images_per_s == 4 / pgd.seconds and pgd.tflops and pgd.peak_fraction == pgd.tflops / 1.0
    assert uadat.reference_seconds is None and uadat.ratio is None  # no official code to compare with


def test_bench_command_runs_at_its_smallest_size() -> None:
    out = run_cli("bench", "--arch", "smallcnn", "--size", "8", "--batch-size", "4", "--repeats", "1", "--warmup", "0")
    assert out.returncode == 0, out.stderr
    for name in ("standard", "pgd-at", "trades", "mart", "uadat"):
        assert name in out.stdout
    assert "ratio" in out.stdout and "ref s/step" in out.stdout
    bad = run_cli("bench", "--defense", "nope", "--arch", "smallcnn")
    assert bad.returncode == 2 and "unknown defense 'nope'" in bad.stderr


def test_a_defense_variant_is_timed_with_its_own_settings_and_no_reference() -> None:
    assert defense_variant("uadat:align_fraction=0.25, samples=1") == ("uadat", {"align_fraction": 0.25, "samples": 1})
    assert defense_variant("pgd-at") == ("pgd-at", {})
    rows = bench(["uadat", "uadat:align_fraction=0.25", "pgd-at:steps=16"], "smallcnn", batch_size=4, size=8,
                 device=torch.device("cpu"), repeats=1, warmup=0)
    full, part, longer = rows
    assert part.defense == "uadat:align_fraction=0.25" and longer.reference_seconds is None
    assert part.tflops * part.seconds < full.tflops * full.seconds  # fewer FLOPs per step counted
    bad = run_cli("bench", "--defense", "uadat:align_fraction=2", "--arch", "smallcnn")
    assert bad.returncode == 2 and "align_fraction" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
