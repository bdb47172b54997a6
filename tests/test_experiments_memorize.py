"""experiments/: the multi-seed UUID harness (statistics, tuning on a held-out seed, the run cache, the GPU preset's
code path) on hand-made inputs and tiny runs.

    python -m pytest -q tests/test_experiments_memorize.py
"""

import json
import math

import pytest

import memorize_uuid
import train
from experiments import harness, memorize


def test_paired_difference_and_its_interval():
    d = harness.paired_difference([0.9, 0.8, 0.7], [0.5, 0.5, 0.5])
    assert d["diffs"] == pytest.approx([0.4, 0.3, 0.2]) and d["mean"] == pytest.approx(0.3)
    assert d["std"] == pytest.approx(0.1) and (d["min"], d["max"]) == pytest.approx((0.2, 0.4))
    half = 4.303 * 0.1 / 3 ** 0.5  # Student t with 2 degrees of freedom
    assert d["ci95"] == pytest.approx((0.3 - half, 0.3 + half))
    assert harness.paired_difference([0.9], [0.5])["std"] == 0.0  # one seed: a demo, no interval


def test_a_diverged_run_is_said_so_not_averaged():
    s = harness.spread([1.5, math.inf, 1.7])  # pretraining.final_loss of a run that diverged: inf
    assert s["diverged"] == 1 and harness.spread_text(s, str) == "diverged on 1 of 3 seeds"
    d = harness.paired_difference([1.5, math.inf, 1.7], [1.4, 1.4, 1.4])
    assert harness.interval_text(d, str) == "none: a run diverged" and d["diffs"][1] == math.inf
    assert harness.spread_text(harness.spread([1.5, 1.7]), "{:.1f}".format) == "1.6 ± 0.1 (1.5-1.7)"


def test_tuning_picks_the_best_rate_and_warns_at_an_edge():
    assert harness.pick({(1e-3, None): [0.2], (1e-2, None): [0.6], (1e-1, None): [0.4]}, [1e-3, 1e-2, 1e-1], [],
                        0.02) == ((1e-2, None), [])
    (lr, _), (warning,) = harness.pick({(1e-2, None): [0.6], (1e-1, None): [0.4]}, [1e-2, 1e-1], [], 0.02)
    assert lr == 1e-2 and "edge of the grid" in warning


def test_grid_flags_one_for_all_or_one_per_method():
    assert harness.parse_grid("1e-2,3e-2", ["lora", "mora"]) == {"lora": [1e-2, 3e-2], "mora": [1e-2, 3e-2]}
    assert harness.parse_grid("lora=1e-2,mora=3e-2", ["lora", "mora"]) == {"lora": [1e-2], "mora": [3e-2]}
    assert harness.parse_grid("lora=1e-3:1e-2,mora=3e-2", ["lora", "mora"]) == {"lora": [1e-3, 1e-2],
                                                                                     "mora": [3e-2]}
    with pytest.raises(train.UserError, match=r"no value for \['full'\]"):
        harness.parse_grid("lora=1e-2", ["full", "lora"])
    for bad in ("1e-2,fast", "lora=1e-2=3e-2"):
        with pytest.raises(train.UserError, match=f"--lrs {bad} is not a grid"):
            harness.parse_grid(bad, ["lora"])
    assert harness.parse_grid("lora=0.5:2,relora=8", ["lora", "relora"], "--alphas") == {"lora": [0.5, 2.0],
                                                                                        "relora": [8.0]}
    with pytest.raises(train.UserError, match=r"--alphas lora=2 gives no value for \['relora'\]"):
        harness.parse_grid("lora=2", ["lora", "relora"], "--alphas")


def test_reach_summary_counts_not_reached_as_infinite():
    assert memorize.reach_summary([500, 300, 400]) == "400 (300-500)"
    assert memorize.reach_summary([500, None, None]) == "not reached (500-not reached)"
    assert memorize.reach_summary([None, 300]) == "not reached (300-not reached)"  # median of 300 and infinity
    assert memorize.reach_summary([700]) == "700" and memorize.reach_summary([None]) == "not reached"


def test_the_cache_answers_only_the_same_experiment(workdir, tiny_base, monkeypatch):
    """A fork that changes the pairs (or anything else that determines a run) must not be answered from the cache."""
    tiny_base(block_size=80)
    args = ["--base", "base/ckpt.pt", "--methods", "mora", "--ranks", "2", "--pairs", "4", "--steps", "2",
            "--eval_every", "2", "--batch_size", "2", "--lrs", "1e-2", "--seeds", "1", "--tag", "t"]
    memorize.main(args)
    runs = workdir / "out" / "uuid" / "runs"
    assert len(list(runs.glob("*.json"))) == 1
    trained, real_finetune = [], memorize_uuid.finetune
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: trained.append(a[1]["values"]) or
                        real_finetune(*a, **k))
    memorize.main(args)
    assert trained == []  # the same experiment: reused
    other = [("00000000-0000-4000-8000-%012d" % i, "11111111-1111-4111-8111-%012d" % i) for i in range(4)]
    monkeypatch.setattr(memorize_uuid, "make_pairs", lambda n, seed: other[:n])
    memorize.main(args)
    assert trained == [[v for _, v in other]] and len(list(runs.glob("*.json"))) == 2  # other pairs: trained anew
    tiny_base(block_size=32)  # the same path, now too short for an example: an error, not a cached number
    with pytest.raises(train.UserError, match="example needs"):
        memorize.main(args)


def test_tuned_multi_seed_run_writes_every_field_and_resumes(workdir, tiny_base, monkeypatch):
    tiny_base(block_size=80)
    args = ["--base", "base/ckpt.pt", "--methods", "lora,mora", "--ranks", "2", "--pairs", "6", "--steps", "4",
            "--eval_every", "2", "--batch_size", "3", "--lrs", "1e-3,1e-2", "--seeds", "1,2", "--tag", "tiny"]
    assert len(memorize.main(args + ["--tune_only"])["tuning"]) == 2
    assert len(list((workdir / "out" / "uuid" / "runs").glob("*.json"))) == 4  # 2 methods x 2 rates on seed 0
    results = memorize.main(args)
    saved = json.load(open(workdir / "out" / "uuid" / "tiny" / "results.json"))
    assert saved["tables"] == results["tables"] and len(saved["runs"]) == 4  # 2 methods x 2 reporting seeds
    assert {run["seed"] for run in saved["runs"]} == {1, 2}  # the tuning seed 0 is not reported
    assert len(list((workdir / "out" / "uuid" / "runs").glob("*.json"))) == 2 * 2 + 4  # + 2 methods x 2 rates
    for run in saved["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert all(0 <= p["char_acc"] <= 1 and 0 <= p["exact_match"] <= 1 for p in run["curve"])
        assert len(run["spectra"]) == 6 and 0.1 < run["format_floor"] < 0.5  # 6 pairs: a high floor
    lora, mora_ = (next(r for r in saved["runs"] if r["method"] == m) for m in ("lora", "mora"))
    assert abs(mora_["trainable_params"] / lora["trainable_params"] - 1) < 0.1  # r=2 on d=32: 1,048 vs 1,152
    assert any(line.startswith("| lora r=2 |") for line in saved["tables"])
    assert any("Paired difference MoRA - LoRA" in line for line in saved["tables"])
    assert sum("tuning seeds [0]" in line and "edge of the grid" in line for line in saved["tables"]) == 2

    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert memorize.main(args)["tables"] == results["tables"]
    one_seed = memorize.main(args[:-4] + ["--seeds", "1", "--tag", "tiny"])["tables"]  # a demo: no spread
    assert "±" not in next(line for line in one_seed if line.startswith("| lora r=2 |"))
    assert any("| none: one seed |" in line for line in one_seed)


def test_reporting_on_the_tuning_seed_is_refused(workdir):
    with pytest.raises(SystemExit):
        memorize.main(["--base", "base/ckpt.pt", "--seeds", "0,1", "--tune_seeds", "0"])


def test_gpu_preset_code_path_on_gpt2_weights_with_bpe_in_bf16(workdir, tiny_gpt2_folder):
    """--preset gpu's own path (GPT-2 weights from a HuggingFace folder, a BPE tokenizer, bf16 autocast, tuning on
    a grid), at toy sizes on the CPU."""
    results = memorize.main(["--preset", "gpu", "--base", tiny_gpt2_folder,
                             "--pairs", "4", "--steps", "2", "--eval_every", "1", "--batch_size", "2",
                                  "--seeds", "1", "--lrs", "1e-3,1e-2", "--device", "cpu", "--dtype", "bfloat16"])
    assert results["dtype"] == "bfloat16" and results["estimated_flops"] > 0
    assert {(r["method"], r["seed"]) for r in results["runs"]} == {("full", 1), ("lora", 1), ("mora", 1)}
    assert all(len(r["curve"]) == 3 for r in results["runs"])


def test_offline_gpu_preset_code_path_pretrains_its_own_base(workdir, monkeypatch):
    """--preset gpu-offline: train.py pretrains the base on the bundled corpus (here a toy one, once), then full,
    LoRA and MoRA fine-tune with a compiled training step; the estimate counts launches as well as FLOPs."""
    toy = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "80", "--max_iters", "2",
           "--batch_size", "2", "--eval_iters", "1"]
    monkeypatch.setitem(memorize.BASES, "gpu-offline", toy)
    flags = ["--preset", "gpu-offline", "--pairs", "4", "--steps", "2", "--eval_every", "1", "--batch_size", "2",
             "--device", "cpu", "--dtype", "float32"]
    results = memorize.main(flags)
    assert len(list((workdir / "out" / "uuid").glob("base-gpu-offline-*/ckpt.pt"))) == 1  # keyed by its flags
    assert results["args"]["compile"] and results["estimated_launches"] > 1000 and results["estimated_flops"] > 0
    assert {(r["method"], r["seed"]) for r in results["runs"]} == {("full", 1), ("lora", 1), ("mora", 1)}


def test_picking_rate_and_alpha_by_the_tuning_seeds_mean_and_saying_why_a_pick_is_weak():
    grid, alphas = [1e-3, 1e-2, 1e-1], [1.0, 2.0, 4.0]
    scores = {(lr, a): [0.1, 0.1] for lr in grid for a in alphas}
    scores[1e-2, 2.0] = [0.50, 0.70]  # the best mean, inside both grids
    scores[1e-3, 2.0] = [0.30, 0.34]  # its neighbours: below the spread of its seeds (0.50-0.70)
    assert harness.pick(scores, grid, alphas, 0.02) == ((1e-2, 2.0), [])
    scores[1e-1, 2.0] = [0.55, 0.57]  # a neighbour within that spread: a flat pick, not an optimum
    flat = "flat: a neighbouring rate scores within the tuning seeds' spread"
    assert harness.pick(scores, grid, alphas, 0.02)[1] == [flat]
    scores[1e-2, 4.0] = [0.9, 0.9]  # the best alpha at the edge of its grid
    (lr, alpha), notes = harness.pick(scores, grid, alphas, 0.02)
    assert (lr, alpha) == (1e-2, 4.0) and notes == ["its best alpha 4r is at the edge of [1.0, 2.0, 4.0]; widen it"]
    mora_scores = {(lr, None): [0.1 * i] for i, lr in enumerate(grid)}  # MoRA: no alpha to tune; one tuning seed
    assert harness.pick(mora_scores, grid, alphas, 0.02) == ((1e-1, None), [f"its best rate 0.1 is at the edge of the "
                                                                            f"grid {grid}; widen it"])
    one_seed = {(1e-3, 8.0): [0.30], (1e-2, 8.0): [0.40], (1e-1, 8.0): [0.39]}  # one alpha, and one seed
    assert harness.pick(one_seed, grid, [8.0], 0.02)[1] == [
        "alpha not tuned: 8r is the only one tried",
        "flat: one tuning seed, and a neighbouring rate scores within 0.02 of the pick"]
    one_seed[1e-1, 8.0] = [0.37]  # 3 points below: an interior optimum again, on this tolerance
    assert harness.pick(one_seed, grid, [8.0], 0.02)[1] == ["alpha not tuned: 8r is the only one tried"]
    assert harness.pick(one_seed, grid, [8.0], 0.02, floor=0.45)[1][-1] == ("at the floor: no combination scores "
                                                                          "above 0.45, so the pick is noise")
    assert memorize.name_of("lora", 8, 4.0) == "lora r=8 alpha=4r" and memorize.name_of("mora", 8) == "mora r=8"


def test_lora_tunes_rate_and_alpha_on_two_seeds(workdir, tiny_base):
    tiny_base(block_size=80)
    args = ["--base", "base/ckpt.pt", "--methods", "lora,mora", "--ranks", "2", "--pairs", "4", "--steps", "2",
            "--eval_every", "2", "--batch_size", "2", "--lrs", "1e-3,1e-2", "--alphas", "1,2", "--tune_seeds", "0,4",
            "--seeds", "1", "--tag", "alpha"]
    results = memorize.main(args)
    runs = len(list((workdir / "out" / "uuid" / "runs").glob("*.json")))
    assert runs == (2 * 2 * 2 + 1) + (2 * 2 + 1)  # LoRA: rates x alphas x seeds; MoRA (no alpha) with the same flags
    line = next(line for line in results["tables"] if line.startswith("tuning seeds [0, 4], lora r=2"))
    assert "at 0.001 alpha 1r" in line and "at 0.01 alpha 2r" in line and "; picked " in line
    picked_alpha = float(line.split("; picked ")[1].split(" alpha ")[1].split("r")[0])
    assert results["runs"][0]["alpha"] == picked_alpha * 2  # the run records the absolute alpha, at r = 2
    assert any(line.startswith(f"| lora r=2 alpha={picked_alpha:g}r | ") for line in results["tables"])


def test_a_run_with_a_forks_compression_is_run_again_when_its_module_changes(tiny_base, fork_compression,
                                                                             monkeypatch):
    tiny_base(block_size=80)
    compress, edit_source = fork_compression
    args = ["--base", "base/ckpt.pt", "--methods", "mora", "--ranks", "2", "--pairs", "4", "--steps", "2",
            "--eval_every", "2", "--batch_size", "2", "--lrs", "1e-2", "--seeds", "1", "--tag", "t",
            "--compress", compress]
    trained, real_finetune = [], memorize_uuid.finetune
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: trained.append(1) or real_finetune(*a, **k))
    for source_changed in (False, False, True):
        if source_changed:
            edit_source()
        memorize.main(args)
    assert len(trained) == 2  # the second call was the cached run; the edit to the module made the third train again


def test_a_sweep_trains_ahead_in_worker_processes_and_reads_the_cache(workdir, tiny_base, monkeypatch):
    """--workers 2 --runs 2: the tuning runs, then the reported ones, train batched in two processes (experiments.many)
    before the sweep reads each from the cache; the same sweep again trains nothing."""
    tiny_base(block_size=80)
    args = ["--base", "base/ckpt.pt", "--methods", "lora,mora", "--ranks", "2", "--pairs", "4", "--steps", "2",
            "--eval_every", "2", "--batch_size", "2", "--lrs", "1e-3,1e-2", "--alphas", "32", "--tune_seeds", "0,4",
            "--seeds", "1,2", "--tag", "ahead", "--workers", "2", "--runs", "2"]
    results = memorize.main(args)
    assert [(r["method"], r["seed"], r["engine"]) for r in results["runs"]] == [
        ("lora", 1, "batched"), ("lora", 2, "batched"), ("mora", 1, "batched"), ("mora", 2, "batched")]
    assert len(list((workdir / "out" / "uuid" / "runs").glob("*.json"))) == 2 * (2 * 2 + 2)  # tuning + reported
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a cached run was trained again"))
    assert memorize.main(args)["tables"] == results["tables"]
