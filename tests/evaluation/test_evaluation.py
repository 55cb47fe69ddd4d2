"""``robench eval --checkpoint``: real checkpoints from a real run, through the CLI."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from conftest import run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evalrun")
    proc = run_cli(
        "run", "--results-dir", str(root / "results"), "--runs-dir", str(root / "runs"), "-q",
        "--epochs", "2", "--set", "defense.steps=2", "--attack", "pgd-5", "--n-eval", "60",
        "--set", "eval.checkpoints=both",
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next((root / "results" / "records").rglob("*.json")).read_text())
    checkpoint = root / "runs" / record["run_id"] / "last.pt"
    assert checkpoint.is_file() and f"checkpoints: {checkpoint.parent} (best.pt, last.pt" in proc.stdout
    return {"root": root, "record": record, "checkpoint": checkpoint}


def test_eval_reproduces_the_run_and_writes_a_report(trained_run: dict) -> None:
    ckpt, record = trained_run["checkpoint"], trained_run["record"]
    results = trained_run["root"] / "results"
    proc = run_cli(
        "eval", "--checkpoint", str(ckpt), "--runs-dir", str(trained_run["root"] / "runs"), "-q",
        "--attack", "fgsm", "--attack", "pgd-5", "--attack", "apgd-ce", "--n-eval", "60", "--eps-sweep",
        "--results-dir", str(results),
    )
    assert proc.returncode == 0, proc.stderr
    reports = list((results / "evaluations" / "digits" / "linf-3_16").glob("*.json"))
    assert len(reports) == 1 and f"report: {reports[0]}" in proc.stdout  # beside the records
    assert f"leaderboard: {results / 'digits-linf-3_16.md'}" in proc.stdout
    report = json.loads(reports[0].read_text())
    assert report["source_run_id"] == record["run_id"] and report["defense"] == "pgd-at"
    assert (report["source_checkpoint"], report["source_epoch"]) == ("last", 2)
    assert report["report_id"] == reports[0].stem and reports[0].stem.startswith(f"{record['run_id']}-last-eval-")
    assert list(report["accuracy"]) == ["clean", "FGSM", "PGD-5", "APGD-CE", "worst case"]
    # the same weights came back, on the same machine
    assert report["accuracy"]["clean"] == record["checkpoints"]["last"]["accuracy"]["clean"]
    assert report["machine"] == record["machine"] and report["machine"]["cpu"]
    assert report["accuracy"]["worst case"] <= report["accuracy"]["PGD-5"] <= report["accuracy"]["FGSM"]
    assert [a["name"] for a in report["eval"]["attacks"]] == ["fgsm", "pgd-5", "apgd-ce"]
    sweep = report["eval"]["eps_sweep"]
    assert sweep["points"][0] == {"eps": "0", "eps_value": 0.0, "accuracy": report["accuracy"]["clean"]}
    assert [p["eps"] for p in sweep["points"]][-1] == "3/8"  # exact fractions of 3/16
    assert {c["name"] for c in report["eval"]["checks"]} == {
        "eps0-equals-clean", "monotone-in-eps", "large-eps-breaks"}
    assert "eps sweep" in proc.stdout
    assert list((trained_run["root"] / "runs" / "eval-state").glob("*")) == []  # state removed when done


def test_eval_defaults_to_the_standard_suite_at_the_runs_threat(trained_run: dict) -> None:
    from robench.workflows.evaluate import plan_eval

    plan = plan_eval(trained_run["checkpoint"])
    assert [e.attack.label() for e in plan.run.suite] == ["FGSM", "PGD-20", "CW-20", "AutoAttack"]
    assert str(plan.run.threat) == "Linf eps=3/16" and plan.run.config.eval.n_eval is None
    assert plan.run.config.seed == trained_run["record"]["seed"]
    eps = plan_eval(trained_run["checkpoint"], flags={"threat": {"eps": "1/8"}})
    assert eps.run.threat.eps == "1/8"


def test_a_run_without_autoattack_exports_after_the_command_its_refusal_names(trained_run: dict) -> None:
    """The whole path: the run's suite had no AutoAttack, so the RobustBench export
    refuses and names a command; that command, run as given, makes the run export,
    and the board ranks it by AutoAttack, while the record stays as it was."""
    results, record = trained_run["root"] / "results", trained_run["record"]
    (record_path,) = (results / "records").rglob(f"{record['run_id']}.json")
    before = record_path.read_bytes()
    export = ["leaderboard", "--results-dir", str(results), "-f", "robustbench", "--run", record["run_id"]]
    refused = run_cli(*export)
    assert refused.returncode == 2 and "no AutoAttack result for its best checkpoint" in refused.stderr
    command = shlex.split(refused.stderr.split("then export again: ")[1])
    assert command[:3] == ["robench", "eval", "--checkpoint"], command
    evaluated = run_cli(*command[1:], "-q")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    exported = run_cli(*export)
    assert exported.returncode == 0, exported.stderr
    report = json.loads(next((results / "evaluations").rglob("*-best-eval-*.json")).read_text())
    entry = json.loads(exported.stdout)
    assert entry["autoattack_acc"] == f"{report['accuracy']['AutoAttack']:.2f}"
    assert entry["clean_acc"] == f"{report['accuracy']['clean']:.2f}" and report["eval"]["n"] == 360
    assert (report["source_checkpoint"], report["source_epoch"]) == ("best", record["checkpoints"]["best"]["epoch"])
    assert report["report_id"] in entry["footnote"] and record["run_id"] in entry["footnote"]
    board = (results / "digits-linf-3_16.md").read_text()
    assert "ranked by AutoAttack accuracy;" in board and "best (eval report)" in board
    assert record_path.read_bytes() == before  # records are immutable


def test_eval_bad_attack_is_one_line(trained_run: dict) -> None:
    proc = run_cli("eval", "--checkpoint", str(trained_run["checkpoint"]), "--attack", "nope", "-q")
    assert proc.returncode == 2 and "unknown attack 'nope'" in proc.stderr


def test_eval_refuses_to_overwrite_a_report(trained_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    out.write_text("{}")
    proc = run_cli("eval", "--checkpoint", str(trained_run["checkpoint"]), "--out", str(out), "-q")
    assert proc.returncode == 2 and "not overwriting" in proc.stderr
    assert out.read_text() == "{}"


class _Payload:
    """Unpickling this would create a file: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoints_that_carry_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "robench-checkpoint", "x": _Payload(marker)}, evil)  # torch.save pickles it
    proc = run_cli("eval", "--checkpoint", str(evil), "-q")
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not marker.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["missing", "plain-state-dict", "garbage"])
def test_bad_checkpoints_are_one_line_exit_2(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    if kind == "plain-state-dict":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint")
    proc = run_cli("eval", "--checkpoint", str(path), "-q")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {"missing": "not found", "plain-state-dict": "not a robench checkpoint",
            "garbage": "cannot read"}[kind] in proc.stderr


# --------------------------------------------------------------- weights robench did not save
#: test points: few, so a WRN-34-10 on the CPU takes seconds
N_OFFICIAL = 60


def _official_trades_file(folder: Path) -> tuple[Path, torch.nn.Module]:
    """A WRN-34-10 "trained on raw [0, 1] digits", saved as the official TRADES code
    saves it: from nn.DataParallel (every key under ``module.``), with the unused
    ``sub_block1`` copy of ``block1``. Training is replaced by fitting the linear head
    to the random features of the raw training images (least squares, one pass), which
    makes an accurate classifier of raw inputs and a poor one of normalised inputs."""
    from robench.core.registry import get_registry

    torch.manual_seed(3)
    net = get_registry("architecture").create("wrn-34-10").build(10, (1, 8, 8)).eval()
    train = get_registry("dataset").create("digits").load(Path(), 0).train
    seen: dict[str, torch.Tensor] = {}
    hook = net.fc.register_forward_hook(lambda module, args, out: seen.update(features=args[0]))
    with torch.no_grad():
        net(train.images())
        features, targets = seen["features"], torch.nn.functional.one_hot(train.y, 10).float()
        gram = features.T @ features + 1e-3 * torch.eye(features.shape[1])
        net.fc.weight.copy_(torch.linalg.solve(gram, features.T @ targets).T)
        net.fc.bias.zero_()
    hook.remove()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state.update({f"module.sub_block1.{k[len('block1.'):]}": torch.randn_like(v.float()).to(v.dtype)
                  for k, v in net.state_dict().items() if k.startswith("block1.")})
    path = folder / "model-wideres-epoch76.pt"
    torch.save(state, path)
    return path, net


def test_official_weights_trained_on_raw_inputs_evaluate_as_published(tmp_path: Path) -> None:
    """With data.normalize=false the evaluated model is exactly the official network on
    [0, 1] inputs; with the default, the dataset's normalisation sits in front."""
    from robench.core.registry import get_registry
    from robench.evaluation.sequential import percent, subset_indices

    path, net = _official_trades_file(tmp_path)
    digits = get_registry("dataset").create("digits")
    test = digits.load(Path(), 0).test
    idx = subset_indices(len(test), N_OFFICIAL)
    x, y = test.images(idx), test.y[idx]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (digits.mean, digits.std))
    with torch.no_grad():
        expected = {"false": percent(net(x).argmax(1) == y), "true": percent(net((x - mean) / std).argmax(1) == y)}
    assert expected["false"] > 80 > expected["true"]  # so the test tells the two apart
    for normalize, clean in expected.items():
        out = tmp_path / f"normalize-{normalize}.json"
        proc = run_cli("eval", "--weights", str(path), "--arch", "wrn-34-10", "--data", "digits",
                       "--set", f"data.normalize={normalize}", "--attack", "fgsm", "--n-eval", str(N_OFFICIAL),
                       "--set", "eval.checks=false", "--out", str(out), "-q")
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["accuracy"]["clean"] == clean, (normalize, report["accuracy"], expected)
        assert report["config"]["data"].get("normalize", True) is (normalize == "true")  # recorded when off
        assert (report["source_run_id"], report["source_checkpoint"], report["source_epoch"]) == (
            "", "model-wideres-epoch76", None)


@pytest.mark.parametrize(("args", "expected"), [
    (["--weights", "W"], "--weights needs --arch and --data"),
    (["--weights", "W", "--checkpoint", "C"], "give --checkpoint PATH"),
    ([], "give --checkpoint PATH"),
    (["--checkpoint", "C", "--arch", "smallcnn"], "--arch and --data go with --weights"),
    (["--weights", "C", "--arch", "smallcnn", "--data", "digits"], "is a robench checkpoint; evaluate it with"),
    (["--weights", "EVIL", "--arch", "smallcnn", "--data", "digits"], "refusing to load"),
    (["--weights", "TENSOR", "--arch", "smallcnn", "--data", "digits"], "holds no state dict"),
])
def test_bad_weights_arguments_are_one_line(trained_run: dict, tmp_path: Path, args: list, expected: str) -> None:
    marker = tmp_path / "pwned.txt"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    names = {"W": str(tmp_path / "evil.pt"), "C": str(trained_run["checkpoint"]),
             "EVIL": str(tmp_path / "evil.pt"), "TENSOR": str(tmp_path / "tensor.pt")}
    proc = run_cli("eval", *[names.get(a, a) for a in args], "-q")
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not marker.exists()
