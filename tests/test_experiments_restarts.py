"""experiments/restarts.py: the authors' ReMoRA (alternating groupings), the rank it accumulates against random
permutations, and the three comparisons at toy size (CPU, seconds).

    python -m pytest -q tests/test_experiments_restarts.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import mora
import train
from experiments import restarts

MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
         "--eval_iters", "2", "--eval_interval", "3", "--rank", "2", "--log_interval", "1"]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def share_matrices(in_features: int, out_features: int, r_hat: int, contiguous: bool):
    """Sharing's f_comp (r^, in) and f_decomp (out, r^) as explicit 0/1 matrices, from the docstring's rule."""
    n = -(-in_features // r_hat)
    comp = torch.zeros(r_hat, in_features, dtype=torch.float64)
    for p in range(n * r_hat):  # the input wrapped around to n r^ positions
        comp[p // n if contiguous else p % r_hat, p % in_features] += 1
    decomp = torch.zeros(out_features, r_hat, dtype=torch.float64)
    for j in range(out_features):
        decomp[j, j * r_hat // out_features if contiguous else j % r_hat] = 1
    return comp, decomp


def test_the_authors_remora_alternates_groupings_and_its_rank_stops_growing():
    torch.manual_seed(0)
    layer = mora.MoRALinear(torch.nn.Linear(32, 32, bias=False).double(), 2, restarts.AlternatingShare).double()
    model, w0, expected = torch.nn.ModuleDict({"layer": layer}), layer.base_weight.detach().clone(), 0
    optimizer = torch.optim.AdamW(layer.parameters())
    for cycle in range(4):
        with torch.no_grad():
            layer.M.normal_()
        comp, decomp = share_matrices(32, 32, layer.r_hat, contiguous=cycle % 2 == 1)
        expected = expected + decomp @ layer.M.detach() @ comp  # this cycle's dW, by the explicit matrices
        x = torch.randn(5, 32, dtype=torch.float64)
        before = layer(x)
        with restarts.authors_restarts():
            train.restart_adapters(model, optimizer)
        torch.testing.assert_close(layer(x), before)  # a restart keeps the function
        torch.testing.assert_close(layer.base_weight.detach() - w0, expected)  # interleaved, contiguous, ...
        assert layer.compression.contiguous == (cycle % 2 == 0) and not layer.permuted
    assert train.restart_adapters.__name__ == "restart_adapters"  # the hook is gone after its block

    random_ranks = restarts.accumulated_rank(False, 128, 8, 4)
    alternating_ranks = restarts.accumulated_rank(True, 128, 8, 4)
    assert random_ranks[0] == alternating_ranks[0] == mora.r_hat_of(128, 128, 8)  # one cycle: the same sharing
    assert random_ranks[-1] == 128 and alternating_ranks[1] > alternating_ranks[0]
    assert alternating_ranks[1:] == [alternating_ranks[1]] * 3 and alternating_ranks[1] < 128  # two subspaces only


def test_the_authors_schedule_scales_their_10k_step_run():
    # Theirs: 10,000 steps, warmup 1,000, a merge every 2,000, 50 steps of re-warmup, cosine to zero.
    assert restarts.authors_schedule(10_000) == ["--schedule", "cycle", "--warmup", "1000", "--merge_every", "2000",
                                                 "--restart_warmup", "50", "--min_lr_ratio", "0"]
    assert restarts.authors_schedule(1000)[3:8:2] == ["100", "200", "5"]


def test_the_rate_ratio_table_by_hand():
    # A constant rate, a restart at step 2 with one step of re-warmup: both schedules run ReLoRA at 1, 1, 1/2, 1 and
    # LoRA at 1, 1, 1, 1; the run's mean ratio is 3.5/4, its second half's (steps 2, 3) and last cycle's 1.5/2.
    flags = ["--max_iters", "4", "--warmup", "0", "--merge_every", "2", "--restart_warmup", "1", "--min_lr_ratio", "1"]
    assert restarts.rate_ratio_table(flags)[2:4] == [f"| --schedule {s} | 0.88x | 0.75x | 0.75x |"
                                                     for s in ("cycle", "jagged")]


def config_and_restarts(folder):
    records = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    return records[0], [r["iter"] for r in records if r["kind"] == "restart"]


def rows(tables):
    """The row labels of a part's tables: its runs, then its paired differences."""
    return [line.split(" | ")[0][2:] for line in tables if line.startswith("| ") and not line.startswith("| --")
            and "lr |" not in line and "mean |" not in line]


def test_paper_and_tuned_settings_share_the_base_runs(workdir):
    tiny = ["--seeds", "1,2", *MODEL, "--max_iters", "10"]  # the authors' schedule: warmup 1, merges every 2
    tables = restarts.main(["--part", "paper", "--lrs", "lora=1e-2,mora=3e-2", *tiny])["tables"]
    assert tables[0].startswith("| mean lr, ReLoRA / LoRA") and tables[2].startswith("| --schedule cycle | ")
    assert rows(tables) == ["lora", "relora, cycle every 2", "mora", "remora, cycle every 2",
                            "lora - relora, cycle every 2", "mora - remora, cycle every 2"]
    root = workdir / "out" / "compare" / "restarts"
    config, restarted_at = config_and_restarts(root / "relora-cycle-every-2" / "relora-lr0.01-seed1")
    assert (config["schedule"], config["warmup"], config["merge_every"], config["restart_warmup"],
            config["min_lr_ratio"], config["lr"]) == ("cycle", 1, 2, 1, 0, 1e-2)  # LoRA's rate
    assert restarted_at == [2, 4, 6, 8]
    lora_run = root / "lora" / "lora-lr0.01-seed1" / "metrics.jsonl"
    written = lora_run.stat().st_mtime_ns

    tables = restarts.main(["--part", "tuned", "--methods", "lora", "--lrs", "lora=1e-2,relora=3e-3", *tiny])["tables"]
    assert rows(tables) == ["lora", "relora, jagged every 2", "lora - relora, jagged every 2"]
    config, restarted_at = config_and_restarts(root / "relora-jagged-every-2" / "relora-lr0.003-seed2")
    assert (config["schedule"], config["warmup"], config["merge_every"], config["restart_warmup"],
            config["min_lr_ratio"], config["lr"]) == ("jagged", 1, 2, 1, 0, 3e-3)  # its own rate
    assert restarted_at == [2, 4, 6, 8] and lora_run.stat().st_mtime_ns == written  # LoRA's runs, from the cache


@pytest.mark.parametrize("flags, message", [
    (["--part", "paper", "--lrs", "lora=1e-2:3e-2,mora=3e-2"], "gives lora 2 rates"),
    (["--part", "paper", "--lrs", "lora=1e-2,mora=3e-2", "--merge_every", "5"], "leave them out"),
    (["--part", "remora", "--lrs", "remora=1e-2", "--warmup=5"], "leave them out"),
    (["--part", "tuned", "--lrs", "lora=1e-2,mora=3e-2"], "gives no value for"),
    (["--part", "merge_every", "--lrs", "relora=1e-2,remora=3e-2", "--frequencies", "100,2e2"], "2e2: write step"),
    (["--part", "paper", "--methods", "relora", "--lrs", "relora=1e-2"], "--methods relora"),
])
def test_bad_flags_end_in_one_line_before_any_run(flags, message, workdir):
    with pytest.raises(train.UserError, match=message):
        restarts.main(flags + MODEL)
    assert not (workdir / "out").exists()


def test_merge_frequency_and_remora_both_ways(workdir):
    tiny = ["--seeds", "1", *MODEL, "--max_iters", "10"]
    tables = restarts.main(["--part", "merge_every", "--lrs", "relora=1e-2,remora=3e-2", *tiny])["tables"]
    assert [row for row in rows(tables) if " - " in row] == [
        f"{base} - {twin}, jagged every {n}" for base, twin in (("lora", "relora"), ("mora", "remora"))
        for n in (1, 2, 5)]  # the default frequencies: max_iters/10, /5, /2
    root = workdir / "out" / "compare" / "restarts"
    assert config_and_restarts(root / "remora-jagged-every-5" / "remora-lr0.03-seed1")[1] == [5]
    config, restarted_at = config_and_restarts(root / "mora" / "mora-lr0.03-seed1")
    assert restarted_at == [] and config["lr"] == 3e-2  # never: the base method at the twin's rate

    tables = restarts.main(["--part", "remora", "--lrs", "remora=3e-2", *tiny])["tables"]
    assert "remora share, random permutations, cycle every 2 - remora share, alternating groupings, cycle every 2" \
        in rows(tables)
    for way, identity in (("random-permutations", False), ("alternating-groupings", True)):
        state = torch.load(root / f"remora-share-{way}-cycle-every-2" / "remora-lr0.03-seed1" / "ckpt.pt",
                           weights_only=True)
        assert (state["config"]["schedule"], state["config"]["merge_every"]) == ("cycle", 2)  # the authors'
        perm = next(v for k, v in state["model"].items() if k.endswith("in_perm"))
        assert torch.equal(perm, torch.arange(len(perm))) == identity  # the authors' variant permutes nothing
    assert sorted(p.name for p in root.glob("*.json")) == ["merge_every.json", "remora.json"]


def test_as_a_script_the_authors_variant_permutes_nothing(workdir):
    """python -m runs this file as __main__, a second copy of the module beside the one that --compress
    experiments.restarts:AlternatingShare imports: the hook must act on that one's class (it once did not)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "experiments.restarts", "--part", "remora", "--lrs", "remora=3e-2",
                    "--seeds", "1", *MODEL, "--max_iters", "10", "--device", "cpu"], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": repo})
    run = workdir / "out" / "compare" / "restarts" / "remora-share-alternating-groupings-cycle-every-2"
    state = torch.load(run / "remora-lr0.03-seed1" / "ckpt.pt", weights_only=True)
    perm = next(v for k, v in state["model"].items() if k.endswith("in_perm"))
    assert torch.equal(perm, torch.arange(len(perm)))


def test_resets_against_the_tuned_twin(workdir):
    tiny = ["--seeds", "1", *MODEL, "--max_iters", "10", "--methods", "lora"]
    restarts.main(["--part", "tuned", "--lrs", "lora=1e-2,relora=3e-3", *tiny])
    root = workdir / "out" / "compare" / "restarts"
    dropped = root / "relora-jagged-every-2" / "relora-lr0.003-seed1" / "metrics.jsonl"
    written = dropped.stat().st_mtime_ns
    tables = restarts.main(["--part", "reset", "--lrs", "relora=3e-3", *tiny])["tables"]
    assert rows(tables) == ["relora, jagged every 2", "relora, jagged every 2, reset random",
                            "relora, jagged every 2, reset magnitude",
                            "relora, jagged every 2 - relora, jagged every 2, reset random",
                            "relora, jagged every 2 - relora, jagged every 2, reset magnitude"]
    assert dropped.stat().st_mtime_ns == written  # tuned's twin, from the cache
    for reset in ("random", "magnitude"):
        config, restarted_at = config_and_restarts(root / f"relora-jagged-every-2-reset-{reset}" / dropped.parent.name)
        assert (config["reset"], config["schedule"], config["lr"], restarted_at) == (reset, "jagged", 3e-3,
                                                                                       [2, 4, 6, 8])
