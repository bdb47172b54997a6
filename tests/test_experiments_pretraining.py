"""experiments/pretraining.py: tuning on a held-out seed, final (not best) losses, paired gaps, resuming (tiny
runs, CPU).

    python -m pytest -q tests/test_experiments_pretraining.py
"""

import importlib.util
import json
import platform

import pytest

import train
from experiments import harness, pretraining as compare
from experiments.harness import pyplot as plt

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
        "--eval_iters", "2", "--warmup", "2", "--max_iters", "6", "--eval_interval", "3", "--rank", "2"]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tune_on_two_seeds_then_report_final_losses_and_paired_gaps(workdir, monkeypatch):
    args = ["--methods", "lora,mora", "--lrs", "1e-3,1e-2,1e-1", "--seeds", "1,2", "--tag", "tiny", *TINY]
    assert len(compare.main(args + ["--tune_only"])["tuning"]) == 2
    assert sorted(p.name for p in (workdir / "out" / "compare" / "tiny").iterdir()) == sorted(  # tuning seeds 0, 4
        f"{m}{'-alpha4' if m == 'lora' else ''}-lr{lr}-seed{seed}" for m in ("lora", "mora")
        for lr in ("0.001", "0.01", "0.1") for seed in (0, 4))
    results = compare.main(args)
    for method, row in results["rows"].items():
        flags = TINY + (["--alpha", "4"] if method == "lora" else [])  # the default --alphas 2: 2r at r = 2
        loss = lambda lr, seed: compare.final_loss(compare.run("out/compare/tiny", method, lr, seed, flags))
        tuned = {lr: loss(lr, 0) + loss(lr, 4) for lr in (1e-3, 1e-2, 1e-1)}
        assert row["lr"] == min(tuned, key=tuned.get)  # the best mean over the tuning seeds
        folder = f"{method}{'-alpha4' if method == 'lora' else ''}-lr{row['lr']:g}"
        for seed, loss in zip((1, 2), row["losses"]):
            records = [json.loads(line) for line in
                       open(workdir / "out" / "compare" / "tiny" / f"{folder}-seed{seed}" / "metrics.jsonl")]
            assert loss == [r["val_loss"] for r in records if r["kind"] == "eval"][-1]  # the final one
    assert any("NOTE: alpha not tuned: 2r is the only one tried" in line for line in results["tables"])
    assert "nats per byte" in results["tables"][0]
    gap = [line for line in results["tables"] if line.startswith("| lora - mora |")]
    expected = sum(a - b for a, b in zip(results["rows"]["lora"]["losses"], results["rows"]["mora"]["losses"])) / 2
    assert len(gap) == 1 and f"| {expected:.4f} |" in gap[0]
    assert all(len(runs) == 2 for runs in results["curves"].values())
    if importlib.util.find_spec("matplotlib"):  # the figure is saved, then closed: sweeps do not pile them up
        assert (workdir / "out" / "compare" / "tiny" / "pretraining.png").exists() and not plt().get_fignums()

    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert compare.main(args)["tables"] == results["tables"]
    one_seed = compare.main([*args[:4], "--seeds", "1", *args[6:]])["tables"]  # a demo: no spread, no interval
    assert "±" not in next(line for line in one_seed if line.startswith("| lora |"))
    assert "| none: one seed |" in next(line for line in one_seed if line.startswith("| lora - mora |"))


def test_loras_alpha_is_tuned_with_its_rate_and_reported_with_it(workdir, capsys):
    args = ["--methods", "lora,mora", "--alphas", "1,4,16", "--lrs", "lora=1e-2:1e-1,mora=1e-2", "--tune_seeds", "0",
            "--seeds", "1", "--tag", "alpha", *TINY]
    results = compare.main(args)
    run = lambda lr, a: compare.run("out/compare/alpha", "lora", lr, 0, TINY + ["--alpha", str(2 * a)])
    loss = lambda lr, a: compare.final_loss(run(lr, a))
    tuned = {(lr, a): loss(lr, a) for lr in (1e-2, 1e-1) for a in (1, 4, 16)}
    lr, alpha = min(tuned, key=tuned.get)
    assert (results["rows"]["lora"]["lr"], results["rows"]["lora"]["alpha_r"]) == (lr, alpha)
    assert results["rows"]["mora"]["alpha_r"] is None  # one rate for MoRA: not tuned, no tuning runs
    line = next(line for line in results["tables"] if line.startswith("tuning seeds [0], lora:"))
    assert "at 0.01 alpha 1r" in line and "at 0.1 alpha 16r" in line and "NOTE: its best rate" in line  # 2-rate grid
    assert next(line for line in results["tables"] if line.startswith("| lora |")).split(" | ")[3] == f"{alpha:g}r"
    assert (workdir / "out" / "compare" / "alpha" / f"lora-alpha{2 * alpha:g}-lr{lr:g}-seed1").is_dir()
    assert not list((workdir / "out" / "compare" / "alpha").glob("mora-*-seed0"))
    per_method = [*args[:2], "--alphas", "lora=1:4:16", *args[4:]]  # the same grid, given per method: the same runs
    assert compare.main(per_method)["tables"] == results["tables"]
    with pytest.raises(train.UserError, match=r"--alphas lora=1:4:16 gives no value for \['relora'\]"):
        compare.main(["--methods", "lora,relora", "--alphas", "lora=1:4:16", "--lrs", "1e-2", *TINY])
    with pytest.raises(SystemExit):  # MoRA has no alpha: a grid for it is refused, not ignored
        compare.main([*args[:2], "--alphas", "lora=1:4:16,mora=2", *args[4:]])
    assert "--alphas lora=1:4:16,mora=2: only lora and relora have an alpha" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # LoRA's alpha is tuned here, never passed through
        compare.main([*args, "--alpha", "8"])


def test_reporting_the_tuning_seed_or_other_flags_is_refused():
    with pytest.raises(SystemExit):
        compare.main(["--seeds", "0,1", *TINY])
    compare.main(["--methods", "mora", "--lrs", "1e-2,1e-1", "--tag", "t", "--tune_only", *TINY])
    with pytest.raises(train.UserError, match="holds a run with other flags"):
        compare.main(["--methods", "mora", "--lrs", "1e-2,1e-1", "--tag", "t", "--tune_only", *TINY, "--rank", "4"])


def test_a_run_by_other_code_is_run_again(workdir, monkeypatch):
    """A cached run is the identical experiment only if the code that determines its numbers is the same."""
    args = ["--methods", "lora", "--lrs", "1e-2", "--seeds", "1", "--tag", "code", *TINY]
    compare.main(args)
    trained = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda flags: trained.append(flags) or real_main(flags))
    monkeypatch.setattr(harness, "UUID_CODE", "another version of memorize_uuid.py")  # which a train.py run never runs
    compare.main(args)
    assert trained == []
    monkeypatch.setattr(harness, "TRAIN_CODE", "another version of mora.py")
    compare.main(args)
    assert len(trained) == 1  # one rate and one alpha: nothing to tune, so the reported run alone, again
    assert json.load(open(workdir / "out" / "compare" / "code" / "lora-alpha4-lr0.01-seed1" / "code.json")) == {
        "digest": "another version of mora.py"}


def test_a_run_with_a_forks_compression_is_run_again_when_its_module_changes(workdir, fork_compression,
                                                                             monkeypatch):
    compress, edit_source = fork_compression
    flags = TINY + ["--compress", compress]
    trained = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda flags: trained.append(flags) or real_main(flags))
    for source_changed in (False, False, True):
        if source_changed:
            edit_source()
        compare.run("out/compare/fork", "mora", 1e-2, 1, flags)
    assert len(trained) == 2  # the second call was the cached run; the edit to the module made the third train again


def test_the_stdlib_preset_runs_in_parts_and_processes(workdir, capsys):
    """The GPU preset's path at toy size: this Python's standard library as the corpus (built once), a part that
    trains what fits its minutes and says so, then two worker processes for the rest."""
    args = ["--preset", "stdlib-toy", "--methods", "lora,mora", "--tune_seeds", "0", "--seeds", "1,2"]
    assert compare.main(args + ["--minutes", "1e-4"]) == {"stage": "tuning", "done": 1, "of": 4}
    out = capsys.readouterr().out
    assert "this part: 1 of the 4 runs left in this stage" in out and "run the same command again" in out
    results = compare.main(args + ["--workers", "2"])
    corpus = f"out/data/stdlib-{platform.python_version()}"
    assert json.load(open(workdir / corpus / "files.json"))["python"] == platform.python_version()
    for row in results["rows"].values():
        for out_dir in row["dirs"]:
            config = json.loads(open(f"{out_dir}/metrics.jsonl").readline())
            assert (config["data"], config["n_layer"], config["rank"]) == (corpus, 1, 2)
            assert out_dir.startswith("out/compare/stdlib-toy/")
    assert any(line.startswith("| lora - mora |") for line in results["tables"])
