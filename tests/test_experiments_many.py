"""experiments/many.py: K runs trained batched equal K memorize_uuid.finetune runs, per method and route; jobs in worker
processes join through the run cache; the throughput command reports (tiny sizes, CPU).

    python -m pytest -q tests/test_experiments_many.py
"""

import argparse
import contextlib

import pytest
import torch

import memorize_uuid
import mora
import train
from experiments import many, memorize

FLAGS = dict(pairs=8, steps=300, batch_size=4, eval_every=100, min_lr_ratio=0.1, alpha_r=2, compress="rotate",
             compile=False, device="cpu", dtype="float32", base="base/ckpt.pt")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A 1-block, 32-wide GPT pretrained for 30 steps: fine-tuned at these rates, its runs learn smoothly, so float
    rounding stays rounding (a run that blows up turns a 1e-7 difference into any other)."""
    folder = tmp_path_factory.mktemp("many")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        train.main(["--method", "full", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "80",
                    "--batch_size", "4", "--max_iters", "30", "--eval_interval", "30", "--eval_iters", "1",
                    "--out_dir", "base"])
        return {**memorize.load_base("base/ckpt.pt", "cpu"), "folder": folder}


@pytest.mark.parametrize("method,compress,route", [("full", "rotate", "dense"), ("lora", "rotate", "dense"),
                                                   ("mora", "rotate", "dense"), ("mora", "share", "dense"),
                                                   ("mora", "rotate", "operators")])
def test_batched_runs_equal_their_finetune_runs_for_300_steps(base, monkeypatch, method, compress, route):
    """Three runs at three rates and seeds (their own pairs, initialization, batch order), trained together, against
    each trained alone by memorize_uuid.finetune: the loss at every checkpoint within 0.1% (measured: at most 2.4e-5),
    and, coarser, the accuracy within 9 of the 288 value characters and each layer's effective rank within 10%. The
    two sum in other orders; over 300 float32 steps the drift flips greedy decoding's near-ties and moves the small
    singular values of a rank-2 update: equal on torch 2.13, up to 5 characters and 4.4% on torch 2.15 (float64
    weights do not remove it: the loss is float32). The losses, distinct per rate, are the trajectory's check."""
    if route == "operators":
        monkeypatch.setattr(mora, "DENSE_MAX_WEIGHTS", 0)  # every layer through the adapter's own operators
    args = argparse.Namespace(**{**FLAGS, "compress": compress})
    enc, cpu, ctx = train.get_tokenizer(base["tokenizer"]), torch.device("cpu"), contextlib.nullcontext()
    lr = {"full": 1e-3, "lora": 3e-3, "mora": 3e-3}[method]
    runs = [{"lr": lr * factor, "seed": seed, "examples": memorize_uuid.encode(memorize_uuid.make_pairs(8, seed), enc)}
            for factor, seed in ((1, 1), (2, 2), (0.5, 3))]
    batched = many.finetune_batched(base, runs, method, 2, args, cpu, ctx)
    for run, together in zip(runs, batched):
        alone = memorize_uuid.finetune(base, run["examples"], method, 2, run["lr"], run["seed"], args, cpu, ctx, "one")
        assert [p["step"] for p in together["curve"]] == [p["step"] for p in alone["curve"]] == [0, 100, 200, 300]
        for a, b in zip(together["curve"][1:], alone["curve"][1:]):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3), (run["seed"], a, b)
            assert abs(a["char_acc"] - b["char_acc"]) <= 9 / 288 and abs(a["exact_match"] - b["exact_match"]) <= 1 / 8
        for layer, stats in alone["spectra"].items():
            assert together["spectra"][layer]["effective_rank"] == pytest.approx(stats["effective_rank"], rel=0.1)
        assert {k: together[k] for k in ("method", "lr", "alpha", "seed", "trainable_params")} == \
            {k: alone[k] for k in ("method", "lr", "alpha", "seed", "trainable_params")}
    assert len({round(run["curve"][-1]["loss"], 4) for run in batched}) == 3  # three runs that trained apart


def test_jobs_group_runs_of_one_structure():
    args = argparse.Namespace(**FLAGS)
    alpha32 = argparse.Namespace(**{**FLAGS, "alpha_r": 32})
    share = argparse.Namespace(**{**FLAGS, "compress": "share"})
    plan = [{"args": args, "method": "lora", "rank": 8, "lr": 1e-3, "seed": s} for s in (1, 2, 3)] + [
        {"args": alpha32, "method": "lora", "rank": 8, "lr": 2e-3, "seed": 1},
        {"args": share, "method": "mora", "rank": 8, "lr": 1e-2, "seed": 1}]
    jobs = many.jobs_for(plan, "cpu", batch=2)
    assert [(j["method"], j["args"]["alpha_r"], j["args"]["compress"], j["runs"], j["batched"]) for j in jobs] == [
        ("lora", 2, "rotate", [(1e-3, 1), (1e-3, 2)], True), ("lora", 2, "rotate", [(1e-3, 3)], True),
        ("lora", 32, "rotate", [(2e-3, 1)], True), ("mora", 2, "share", [(1e-2, 1)], True)]
    assert not any(job["batched"] for job in many.jobs_for(plan, "cpu", batch=1))


def test_worker_processes_fill_the_run_cache_that_sweeps_read(base, monkeypatch):
    """Two spawned workers train four short runs, batched in pairs; memorize.cached_run then answers each from the
    cache (naming the engine) without training, and the same jobs again train nothing."""
    monkeypatch.chdir(base["folder"])
    args = argparse.Namespace(**{**FLAGS, "steps": 4, "eval_every": 2, "pairs": 4})
    plan = [{"args": args, "method": "mora", "rank": 2, "lr": 1e-2, "seed": seed} for seed in (11, 12, 13, 14)]
    assert many.train_jobs(many.jobs_for(plan, "cpu", batch=2), workers=2) == 4
    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a cached run was trained again"))
    for seed in (11, 12, 13, 14):
        run = memorize.cached_run(base, "mora", 2, 1e-2, seed, args, torch.device("cpu"), contextlib.nullcontext(), "")
        assert run["engine"] == "batched" and run["seed"] == seed and len(run["curve"]) == 3
    assert many.train_jobs(many.jobs_for(plan, "cpu", batch=2), workers=2) == 0


def test_the_throughput_command_reports_both_ways_and_caches_nothing(base, monkeypatch):
    monkeypatch.chdir(base["folder"])
    cached = lambda: set((base["folder"] / "out" / "uuid").glob("runs/*"))
    before = cached()
    lines = many.main(["--base", "base/ckpt.pt", "--steps", "3", "--pairs", "4", "--batch_size", "2", "--workers", "2",
                       "--runs", "2", "--device", "cpu"])
    assert lines[-2].startswith("| one run alone | 1 | ") and lines[-1].startswith("| 2 process(es) x 2 run(s) batched")
    cells = [cell.strip() for cell in lines[-1].strip("|").split("|")]
    assert cells[1] == "4" and float(cells[3]) > 0 and cached() == before  # a timing: every run trained, none cached
