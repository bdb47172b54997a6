"""experiments/pretraining.py: tuning on a held-out seed, final (not best) losses, paired gaps, resuming (tiny
runs, CPU).

    python -m pytest -q tests/test_experiments_pretraining.py
"""

import json

import pytest

import train
from experiments import harness, pretraining as compare

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
        "--eval_iters", "2", "--warmup", "2", "--max_iters", "6", "--eval_interval", "3", "--rank", "2"]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tune_then_report_final_losses_and_paired_gaps(workdir, monkeypatch):
    args = ["--methods", "lora,mora", "--lrs", "1e-3,1e-2,1e-1", "--seeds", "1,2", "--tag", "tiny", *TINY]
    assert len(compare.main(args + ["--tune_only"])["tuning"]) == 2
    assert sorted(p.name for p in (workdir / "out" / "compare" / "tiny").iterdir()) == \
        [f"{m}-lr{lr}-seed0" for m in ("lora", "mora") for lr in ("0.001", "0.01", "0.1")]
    results = compare.main(args)
    for method, row in results["rows"].items():
        tuned = {lr: compare.final_loss(compare.run("out/compare/tiny", method, lr, 0, TINY)) for lr in
                 (1e-3, 1e-2, 1e-1)}
        assert row["lr"] == min(tuned, key=tuned.get)  # picked on the tuning seed
        for seed, loss in zip((1, 2), row["losses"]):
            records = [json.loads(line) for line in
                       open(workdir / "out" / "compare" / "tiny" / f"{method}-lr{row['lr']:g}-seed{seed}" /
                            "metrics.jsonl")]
            assert loss == [r["val_loss"] for r in records if r["kind"] == "eval"][-1]  # the final one
    gap = [line for line in results["tables"] if line.startswith("| lora - mora |")]
    expected = sum(a - b for a, b in zip(results["rows"]["lora"]["losses"], results["rows"]["mora"]["losses"])) / 2
    assert len(gap) == 1 and f"| {expected:.4f} |" in gap[0]
    assert all(len(runs) == 2 for runs in results["curves"].values())

    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert compare.main(args)["tables"] == results["tables"]
    one_seed = compare.main([*args[:4], "--seeds", "1", *args[6:]])["tables"]  # a demo: no spread, no interval
    assert "±" not in next(line for line in one_seed if line.startswith("| lora |"))
    assert "| none: one seed |" in next(line for line in one_seed if line.startswith("| lora - mora |"))


def test_reporting_the_tuning_seed_or_other_flags_is_refused():
    with pytest.raises(SystemExit):
        compare.main(["--seeds", "0,1", *TINY])
    compare.main(["--methods", "lora", "--lrs", "1e-2", "--tag", "t", "--tune_only", *TINY])
    with pytest.raises(train.UserError, match="holds a run with other flags"):
        compare.main(["--methods", "lora", "--lrs", "1e-2", "--tag", "t", "--tune_only", *TINY, "--rank", "4"])


def test_a_run_by_other_code_is_run_again(workdir, monkeypatch):
    """A cached run is the identical experiment only if the code that determines its numbers is the same."""
    args = ["--methods", "lora", "--lrs", "1e-2", "--seeds", "1", "--tag", "code", *TINY]
    compare.main(args)
    monkeypatch.setattr(harness, "CODE_DIGEST", "another version of mora.py")
    trained = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda flags: trained.append(flags) or real_main(flags))
    compare.main(args)
    assert len(trained) == 2  # both runs again: the tuning seed's and the reporting seed's
    assert json.load(open(workdir / "out" / "compare" / "code" / "lora-lr0.01-seed1" / "code.json")) == {
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
