"""Checkpoints from elsewhere: code inside, damaged files, weights that do not fit.

A real checkpoint comes from a real short ``robench run``; the bad ones are made
from it (truncated, with an exploit hidden inside, with a config that no longer
matches its weights) or from scratch. Every one must be refused with exit 2 and one
line naming the file, through ``load_checkpoint``, ``robench eval --checkpoint`` and
``robench run --resume``; an exploit must never run.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from robench.api.errors import CheckpointError, UserError
from robench.api.model import NormalizedClassifier
from robench.core.registry import get_registry
from robench.engine.checkpoint import FORMAT, VERSION, Checkpoint, load_checkpoint, load_weights


class Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a short real run (best.pt, last.pt)."""
    root = tmp_path_factory.mktemp("ckpt-run")
    proc = run_cli(
        "run", "--defense", "standard", "--epochs", "1", "--attack", "fgsm", "--n-eval", "20",
        "--set", "eval.checks=false", "--set", "train.batch_size=256",
        "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs"), "-q",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next((root / "results" / "records").rglob("*.json")).read_text(encoding="utf-8"))
    run_dir = root / "runs" / record["run_id"]
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    return run_dir


def refused(proc: subprocess.CompletedProcess[str], path: Path, *expected: str) -> str:
    """Exit 2 and one ``error:`` line that names ``path``; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: ") and str(path) in line, line
    for text in expected:
        assert text in line, (text, line)
    return line


def eval_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("eval", "--checkpoint", str(path), "--attack", "fgsm", "--n-eval", "20",
                   "--set", "eval.checks=false", "--out", str(path.parent / "report.json"), "-q", *args)


def resume_cli(path: Path) -> subprocess.CompletedProcess[str]:
    """``--resume`` with a fresh results folder, so that the finished run's record does not stop it first."""
    return run_cli("run", "--resume", str(path), "--results-dir", str(path.parent / "results"), "-q")


def copy_of(run_dir: Path, tmp_path: Path, name: str = "last.pt") -> Path:
    folder = tmp_path / "copy"
    folder.mkdir()
    return Path(shutil.copy(run_dir / name, folder / "last.pt"))


# ------------------------------------------------------------------------- code inside
def _save_exploit(path: Path, marker: Path, how: str) -> None:
    payload = {"format": FORMAT, "version": VERSION, "run_id": "x", "epoch": 1, "config": {},
               "state_dict": {}, "extra": Exploit(marker)}
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle, as pickle.dump writes it
        path.write_bytes(pickle.dumps(payload, protocol=int(how.split("-")[1])))


def test_the_exploit_is_real(tmp_path: Path) -> None:
    """Without weights_only the file does run its command: the tests below mean something."""
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    _save_exploit(path, marker, "zip")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle-2", "pickle-5"])
def test_load_checkpoint_refuses_code(tmp_path: Path, how: str) -> None:
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    _save_exploit(path, marker, how)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    if how == "pickle-5":  # torch stops at the first opcode of a modern plain pickle
        assert message.startswith(f"cannot read checkpoint {path}: not a PyTorch file"), message
    else:
        assert message.startswith(f"refusing to load {path}") and "posix.system" in message, message
    assert not marker.exists()


def test_eval_refuses_code(tmp_path: Path) -> None:
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    _save_exploit(path, marker, "zip")
    refused(eval_cli(path), path, "refusing to load", "system")
    assert not marker.exists()


def test_resume_refuses_code_hidden_in_a_real_checkpoint(real_run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = copy_of(real_run, tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["train_state"]["history"].append(Exploit(marker))
    torch.save(payload, path)
    refused(resume_cli(path), path, "refusing to load", "system")
    assert not marker.exists()
    refused(eval_cli(path), path, "refusing to load")
    assert not marker.exists()


# ------------------------------------------------------------------------ damaged files
def test_truncated_checkpoint(real_run: Path, tmp_path: Path) -> None:
    path = copy_of(real_run, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    refused(eval_cli(path), path, "cannot read checkpoint", "truncated")
    refused(resume_cli(path), path, "cannot read checkpoint", "truncated")


@pytest.mark.parametrize("kind", ["garbage", "text", "empty"])
def test_garbage_checkpoint(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "last.pt"
    content = {"garbage": random.Random(0).randbytes(4096), "text": b"not a checkpoint\n", "empty": b""}
    path.write_bytes(content[kind])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    refused(eval_cli(path), path, "cannot read checkpoint")
    refused(resume_cli(path), path, "cannot read checkpoint")


def test_damage_anywhere_is_a_checkpoint_error(real_run: Path, tmp_path: Path) -> None:
    """Cut or flip bytes anywhere in a real checkpoint: it loads, or it is refused in one
    line; never another exception (torch.load raises KeyError, TypeError, ... on some)."""
    data = (real_run / "best.pt").read_bytes()
    rng = random.Random(1)
    path = tmp_path / "damaged.pt"
    outcomes = set()
    for i in range(120):
        if i % 2:
            damaged = data[: rng.randrange(len(data))]
        else:
            flipped = bytearray(data)
            for _ in range(rng.randrange(1, 12)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            damaged = bytes(flipped)
        path.write_bytes(damaged)
        try:
            assert isinstance(load_checkpoint(path), Checkpoint)
            outcomes.add("loaded")
        except CheckpointError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_wrong_field_types_are_refused(real_run: Path, tmp_path: Path) -> None:
    path = copy_of(real_run, tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = [1, 2, 3]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="'state_dict' is not a mapping"):
        load_checkpoint(path)
    del payload["run_id"]
    payload["state_dict"] = {}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="'run_id' is missing"):
        load_checkpoint(path)


# -------------------------------------------------------------- weights that do not fit
def test_eval_with_another_width(real_run: Path) -> None:
    path = real_run / "last.pt"
    line = refused(eval_cli(path, "--set", "arch.width=16"), path, "does not fit the model")
    assert "built for smallcnn width=32 on digits (10 classes), asked for smallcnn width=16" in line
    assert "tensor 'net.0.weight' is 32x1x3x3 in the checkpoint but 16x1x3x3 in the model" in line


def test_eval_on_a_dataset_with_more_classes(real_run: Path) -> None:
    path = real_run / "last.pt"
    line = refused(eval_cli(path, "--set", "data.name=cifar100"), path, "does not fit the model")
    assert "on digits (10 classes), asked for smallcnn on cifar100 (100 classes)" in line


def test_the_class_count_of_a_raw_input_checkpoint_is_named() -> None:
    """A run with data.normalize=false records normalize: false in its data section; the
    message about weights that do not fit still names the dataset's class count."""
    from robench.workflows.evaluate import _num_classes

    assert _num_classes({"name": "digits", "normalize": False}) == 10
    assert _num_classes({"name": "fashion-mnist", "normalize": False, "verify_checksums": False}) == 10
    assert _num_classes({"name": "no-such-dataset"}) is None


def test_eval_with_another_architecture(real_run: Path) -> None:
    path = real_run / "last.pt"
    line = refused(eval_cli(path, "--set", "arch.name=preact-resnet-18"), path, "does not fit the model")
    assert "built for smallcnn on digits (10 classes), asked for preact-resnet-18 on digits" in line
    assert "the checkpoint lacks" in line and "first: 'net.0.weight'" in line


def test_resume_of_a_checkpoint_whose_config_does_not_match_its_weights(real_run: Path, tmp_path: Path) -> None:
    """A last.pt whose config says width 16 over width-32 weights (mixed-up or edited files)."""
    path = copy_of(real_run, tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["arch"]["width"] = 16
    torch.save(payload, path)
    line = refused(resume_cli(path), path, "does not fit the model")
    assert "net.0.weight" in line and "32x1x3x3" in line and "16x1x3x3" in line


def _smallcnn(width: int = 32, classes: int = 10) -> torch.nn.Module:
    """smallcnn as robench builds it for a digits-sized input, normalisation included."""
    torch.manual_seed(width + classes)
    arch = get_registry("architecture").create("smallcnn", {"width": width})
    return NormalizedClassifier(arch.build(classes, (1, 8, 8)), (0.5,), (0.25,))


def _same(a: torch.nn.Module, b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


def test_load_weights_that_fit() -> None:
    source, target = _smallcnn(), _smallcnn()
    target.net[0].weight.data.zero_()
    load_weights(target, source.state_dict(), "model.pt")
    assert _same(target, source.state_dict())


def test_load_weights_of_another_width_leaves_the_model_untouched() -> None:
    target = _smallcnn(16)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        load_weights(target, _smallcnn(32).state_dict(), Path("w32.pt"), context="it was built for width 32")
    assert str(caught.value) == (
        "checkpoint w32.pt does not fit the model: it was built for width 32; tensor 'net.0.weight' is "
        "32x1x3x3 in the checkpoint but 16x1x3x3 in the model (and 6 more)"
    )
    assert _same(target, before)


def test_load_weights_of_another_class_count() -> None:
    with pytest.raises(CheckpointError) as caught:
        load_weights(_smallcnn(classes=100), _smallcnn(classes=10).state_dict(), "c10.pt")
    assert str(caught.value) == (
        "checkpoint c10.pt does not fit the model: tensor 'net.11.weight' is 10x256 in the checkpoint "
        "but 100x256 in the model (and 1 more)"
    )


def test_load_weights_with_missing_and_extra_tensors() -> None:
    state = dict(_smallcnn().state_dict())
    state["net.99.weight"] = state.pop("net.11.weight")
    with pytest.raises(CheckpointError) as caught:
        load_weights(_smallcnn(), state, "renamed.pt")
    assert str(caught.value) == (
        "checkpoint renamed.pt does not fit the model: the checkpoint lacks 1 of the model's tensors "
        "(first: 'net.11.weight'); it has 1 the model does not (first: 'net.99.weight')"
    )


def test_load_weights_keeps_the_architectures_key_adapters() -> None:
    """PreAct-ResNet accepts a DataParallel checkpoint (``module.`` keys): still true through load_weights."""
    def preact() -> torch.nn.Module:
        net = get_registry("architecture").create("preact-resnet-18").build(10, (3, 8, 8))
        return NormalizedClassifier(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    source = preact()
    wrapped = {(k.replace("net.", "net.module.", 1) if k.startswith("net.") else k): v
               for k, v in source.state_dict().items()}
    target = preact()
    load_weights(target, wrapped, "dataparallel.pt")
    assert _same(target, source.state_dict())
