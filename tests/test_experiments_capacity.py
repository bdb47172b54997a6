"""experiments/capacity.py: convergence read from a curve by hand, and a toy capacity curve and ladder that resume.

    python -m pytest -q tests/test_experiments_capacity.py
"""

import importlib.util
import json

import pytest

import memorize_uuid
from experiments import capacity


def curve(losses, accuracies):
    return {"curve": [{"step": i, "loss": loss, "char_acc": acc, "exact_match": 0.0}
                      for i, (loss, acc) in enumerate(zip(losses, accuracies))]}


def test_convergence_is_a_flat_loss_well_below_its_start_and_never_the_floor():
    acc = [0.2, 0.5, 0.9, 0.95, 0.96, 0.96, 0.96, 0.96]
    assert capacity.convergence(curve([None, 2.0, 1.0, 0.5, 0.30, 0.296, 0.295, 0.295], acc), 0.2, 0.02) == "converged"
    assert capacity.convergence(curve([None, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], acc), 0.2, 0.02) == "still improving"
    flat_high = curve([None, 2.0, 1.95, 1.9, 1.9, 1.9, 1.9, 1.9], acc)  # flat, but hardly below its start
    assert capacity.convergence(flat_high, 0.2, 0.02) == "still improving"
    at_floor = curve([None, 2.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3], [0.2, 0.21, 0.2, 0.2, 0.21, 0.2, 0.2, 0.2])
    assert capacity.convergence(at_floor, 0.2, 0.02) == "at the floor"


def test_a_toy_curve_and_ladder_report_every_point_and_resume(workdir, tiny_base, monkeypatch):
    tiny_base(block_size=80)
    flags = ["--base", "base/ckpt.pt", "--pair_counts", "4,6", "--epochs", "2", "--batch_size", "2", "--rank", "2",
             "--seeds", "1,2", "--tag", "toy"]
    results = capacity.main(flags)
    assert set(results["rows"]) == {(p, label) for p in (4, 6) for label in capacity.CURVE}
    for (pairs, label), runs in results["rows"].items():
        assert [r["seed"] for r in runs] == [1, 2]
        assert runs[0]["curve"][-1]["step"] == 2 * -(-pairs // 2)  # epochs x steps per epoch
        assert all(r["convergence"] in ("converged", "still improving", "at the floor") for r in runs)
        assert 0.1 < results["format_floor"][pairs] < 0.6
    saved = json.load(open(workdir / "out" / "uuid" / "toy" / "capacity.json"))
    assert saved["tables"] == results["tables"] and len(saved["runs"]) == 8
    lora = results["rows"][4, "lora"][0]
    assert lora["lr"] == 1e-2 and lora["trainable_params"] == 4 * 2 * (32 + 32) + 2 * 2 * (32 + 128)  # r=2, d=32

    real_finetune = memorize_uuid.finetune
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert capacity.main(flags)["tables"] == results["tables"]
    monkeypatch.setattr(memorize_uuid, "finetune", real_finetune)
    ladder = capacity.main(flags[:2] + ["--pair_counts", "4", "--epochs", "2", "--batch_size", "2", "--rank", "2",
                                        "--seeds", "1", "--ladder", "--tag", "toy-ladder"])
    assert [label for _, label in ladder["rows"]] == list(capacity.LADDER)
    assert ladder["rows"][4, "lora r=r^"][0]["rank"] == 11  # MoRA-share's r^ at 32 x 32, r = 2: sqrt(64 * 2) = 11.3
    assert ladder["rows"][4, "lora"][0]["alpha"] is None  # train.py's default, 2r
    if importlib.util.find_spec("matplotlib"):  # the figure's two panels: accuracy and speed against the rank
        assert (workdir / "out" / "uuid" / "toy-ladder" / "capacity.png").stat().st_size > 0
    scaled = capacity.main(flags[:2] + ["--pair_counts", "4", "--epochs", "2", "--batch_size", "2", "--rank", "2",
                                        "--seeds", "1", "--ladder", "--alpha_r", "4", "--tag", "toy-alpha"])
    assert [(runs[0]["rank"], runs[0]["alpha"]) for (_, label), runs in scaled["rows"].items()
            if label.startswith("lora")] == [(2, 8.0), (11, 44.0)]  # alpha / r = 4 for each LoRA


@pytest.mark.parametrize("flag", [["--pairs", "256"], ["--steps", "100"], ["--methods", "lora"], ["--alpha", "16"]])
def test_the_flags_this_sweep_sets_itself_are_refused(workdir, flag):
    with pytest.raises(SystemExit):  # memorize_uuid's flags that would otherwise be silently ignored here
        capacity.main(flag)
