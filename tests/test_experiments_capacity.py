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


def test_convergence_is_a_flat_loss_well_below_its_start_or_every_value_right_and_never_the_floor():
    acc = [0.2, 0.5, 0.9, 0.95, 0.96, 0.96, 0.96, 0.96]
    assert capacity.convergence(curve([None, 2.0, 1.0, 0.5, 0.30, 0.296, 0.295, 0.295], acc), 0.2, 0.02) == "converged"
    assert capacity.convergence(curve([None, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], acc), 0.2, 0.02) == "still improving"
    flat_high = curve([None, 2.0, 1.95, 1.9, 1.9, 1.9, 1.9, 1.9], acc)  # flat, but hardly below its start
    assert capacity.convergence(flat_high, 0.2, 0.02) == "still improving"
    at_floor = curve([None, 2.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3], [0.2, 0.21, 0.2, 0.2, 0.21, 0.2, 0.2, 0.2])
    assert capacity.convergence(at_floor, 0.2, 0.02) == "at the floor"
    keys_still_learning = curve([None, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], acc[:-1] + [0.995])
    assert capacity.convergence(keys_still_learning, 0.2, 0.02) == "memorized"


def test_a_toy_curve_and_ladder_report_every_point_and_resume(workdir, tiny_base, monkeypatch):
    tiny_base(block_size=80)
    flags = ["--base", "base/ckpt.pt", "--pair_counts", "4,6", "--epochs", "2", "--batch_size", "2", "--ranks", "2",
             "--seeds", "1,2", "--tag", "toy"]
    results = capacity.main(flags)
    assert set(results["rows"]) == {(p, None if label == "full" else 2, label)
                                    for p in (4, 6) for label in capacity.CURVE}
    for (pairs, _, label), runs in results["rows"].items():
        assert [r["seed"] for r in runs] == [1, 2]
        assert runs[0]["curve"][-1]["step"] == 2 * -(-pairs // 2)  # epochs x steps per epoch
        assert all(r["convergence"] in ("memorized", "converged", "still improving", "at the floor") for r in runs)
        assert 0.1 < results["format_floor"][pairs] < 0.6
    saved = json.load(open(workdir / "out" / "uuid" / "toy" / "capacity.json"))
    assert saved["tables"] == results["tables"] and len(saved["runs"]) == 8
    lora = results["rows"][4, 2, "lora"][0]
    assert lora["lr"] == 1e-3 and lora["trainable_params"] == 4 * 2 * (32 + 32) + 2 * 2 * (32 + 128)  # r=2, d=32

    real_finetune = memorize_uuid.finetune
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert capacity.main(flags)["tables"] == results["tables"]
    monkeypatch.setattr(memorize_uuid, "finetune", real_finetune)
    ladder = capacity.main(flags[:2] + ["--pair_counts", "4", "--epochs", "2", "--batch_size", "2", "--ranks", "2",
                                        "--seeds", "1", "--ladder", "--tag", "toy-ladder"])
    assert [label for *_, label in ladder["rows"]] == list(capacity.LADDER)
    assert ladder["rows"][4, 2, "lora r=r^"][0]["rank"] == 11  # MoRA-share's r^ at 32 x 32, r = 2: sqrt(64 * 2) = 11.3
    assert ladder["rows"][4, 2, "lora"][0]["alpha"] == 256  # memorize_uuid's default alpha_r, 128, times r = 2
    if importlib.util.find_spec("matplotlib"):  # the figure's two panels: accuracy and speed against the rank
        assert (workdir / "out" / "uuid" / "toy-ladder" / "capacity.png").stat().st_size > 0
    scaled = capacity.main(flags[:2] + ["--pair_counts", "4", "--epochs", "2", "--batch_size", "2", "--ranks", "2",
                                        "--seeds", "1", "--ladder", "--alpha_r", "4", "--tag", "toy-alpha"])
    assert [(runs[0]["rank"], runs[0]["alpha"]) for (*_, label), runs in scaled["rows"].items()
            if label.startswith("lora")] == [(2, 8.0), (11, 44.0)]  # alpha / r = 4 for each LoRA


def test_a_curve_over_ranks_takes_a_rate_per_rank_and_runs_full_fine_tuning_once(workdir, tiny_base):
    tiny_base(block_size=80)
    results = capacity.main(["--base", "base/ckpt.pt", "--pair_counts", "4", "--epochs", "2", "--batch_size", "2",
                             "--ranks", "1,2", "--lrs", "lora=1e-2:2e-2,mora=3e-2,full=3e-3", "--seeds", "1",
                             "--tag", "toy-ranks"])
    rows = results["rows"]
    adapters = [(4, r, label) for r in (1, 2) for label in capacity.CURVE if label != "full"]
    assert sorted(rows, key=str) == sorted(adapters + [(4, None, "full")], key=str)
    assert [rows[4, r, "lora"][0]["lr"] for r in (1, 2)] == [1e-2, 2e-2]
    assert [rows[4, r, "mora rotate"][0]["lr"] for r in (1, 2)] == [3e-2, 3e-2]
    lora_r1 = rows[4, 1, "lora"][0]
    assert lora_r1["trainable_params"] == 4 * (32 + 32) + 2 * (32 + 128)  # r=1 on a d=32 base: 576
    row = next(line for line in results["tables"] if "| 1 | lora |" in line)
    assert "| 576 | 0.85 |" in row  # 4 pairs x 122 bits / 576 parameters
    paired = next(line for line in results["tables"] if line.startswith("| 4 | 2 | mora rotate - lora |"))
    gap = 100 * (rows[4, 2, "mora rotate"][0]["curve"][-1]["char_acc"] - rows[4, 2, "lora"][0]["curve"][-1]["char_acc"])
    assert paired == f"| 4 | 2 | mora rotate - lora | {gap:.1f} | none: one seed | {gap:.1f} to {gap:.1f} | {gap:.1f} |"
    only = capacity.main(["--base", "base/ckpt.pt", "--pair_counts", "4", "--epochs", "2", "--batch_size", "2",
                          "--ranks", "1", "--labels", "lora", "--lrs", "lora=1e-2", "--seeds", "1",
                          "--tag", "toy-lora"])
    assert list(only["rows"]) == [(4, 1, "lora")] and only["rows"][4, 1, "lora"][0]["curve"] == lora_r1["curve"]


@pytest.mark.parametrize("flags", [["--ranks", "1,2", "--lrs", "lora=1e-2:2e-2:3e-2,mora=3e-2,full=3e-3"],
                                   ["--ranks", "1,2", "--lrs", "lora=1e-2,mora=3e-2,full=3e-3:1e-3"],
                                   ["--ranks", "1,2", "--ladder"], ["--lrs", "lora=1e-2,full=3e-3"],
                                   ["--labels", "lora,mora"], ["--lrs", "lora=fast,mora=3e-2,full=3e-3"],
                                   ["--lrs", "lora,mora=3e-2,full=3e-3"]])
def test_rates_that_do_not_fit_the_ranks_are_refused(workdir, flags):
    with pytest.raises(SystemExit):  # before any base is loaded or run trained
        capacity.main(flags)


@pytest.mark.parametrize("flag", [["--pairs", "256"], ["--steps", "100"], ["--methods", "lora"], ["--alpha", "16"]])
def test_the_flags_this_sweep_sets_itself_are_refused(workdir, flag):
    with pytest.raises(SystemExit):  # memorize_uuid's flags that would otherwise be silently ignored here
        capacity.main(flag)
