"""experiments/restarts.py: the authors' ReMoRA (alternating groupings), the rank it accumulates against random
permutations, and the three comparisons at toy size (CPU, seconds).

    python -m pytest -q tests/test_experiments_restarts.py
"""

import json

import pytest
import torch

import mora
import train
from experiments import restarts

MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "4",
         "--eval_iters", "2", "--eval_interval", "3", "--rank", "2", "--log_interval", "1"]
TINY = MODEL + ["--warmup", "2", "--max_iters", "6", "--merge_every", "2"]


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
    assert random_ranks[0] == alternating_ranks[0] == mora.r_hat(128, 128, 8)  # one cycle: the same sharing
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


def test_the_paper_setting_shares_a_rate_and_runs_the_authors_schedule(workdir):
    tables = restarts.main(["--part", "paper", "--lrs", "lora=1e-2,mora=3e-2", "--seeds", "1,2", *MODEL,
                            "--max_iters", "10"])["tables"]
    assert tables[0].startswith("| mean lr, ReLoRA / LoRA") and tables[2].startswith("| --schedule cycle | ")
    assert [line.split(" | ")[0] for line in tables[5:] if line.startswith("| ") and "lr |" not in line][:4] == \
        ["| lora", "| relora", "| mora", "| remora"]
    assert any(line.startswith("| lora - relora |") for line in tables)
    folder = workdir / "out" / "compare" / "restarts-paper" / "relora" / "relora-lr0.01-seed1"
    records = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    config = records[0]
    assert (config["schedule"], config["warmup"], config["merge_every"], config["restart_warmup"],
            config["min_lr_ratio"], config["lr"]) == ("cycle", 1, 2, 1, 0, 1e-2)
    assert [r["iter"] for r in records if r["kind"] == "restart"] == [2, 4, 6, 8]

    half = restarts.main(["--part", "paper", "--methods", "mora", "--lrs", "mora=3e-2", "--seeds", "1", *MODEL,
                          "--max_iters", "10"])["tables"]
    assert [line.split(" | ")[0] for line in half if line.startswith("| ") and " | 0.03 | " in line] == \
        ["| mora", "| remora"]


@pytest.mark.parametrize("flags, message", [
    (["--part", "paper", "--lrs", "lora=1e-2:3e-2,mora=3e-2"], "gives lora 2 rates"),
    (["--part", "paper", "--lrs", "lora=1e-2,mora=3e-2", "--merge_every", "5"], "leave them out"),
    (["--part", "remora", "--lrs", "remora=1e-2", "--warmup=5"], "leave them out"),
    (["--part", "paper", "--methods", "relora", "--lrs", "relora=1e-2"], "--methods relora"),
])
def test_bad_flags_end_in_one_line_before_any_run(flags, message, workdir):
    with pytest.raises(train.UserError, match=message):
        restarts.main(flags + MODEL)
    assert not (workdir / "out").exists()


def test_merge_frequency_and_remora_both_ways(workdir):
    tables = restarts.main(["--part", "merge_every", "--frequencies", "2,3", "--lrs", "relora=1e-2,remora=3e-2",
                            "--seeds", "1", *TINY])["tables"]
    labels = [line.split(" | ")[0][2:] for line in tables if line.startswith("| ") and " - " in line]
    assert labels == [f"{base} (never) - {m} every {n}" for base, m in (("lora", "relora"), ("mora", "remora"))
                      for n in (2, 3)]
    restarts_at = [json.loads(line)["iter"] for line in open(
        workdir / "out" / "compare" / "restarts-merge_every" / "remora-every-3" / "remora-lr0.03-seed1" /
        "metrics.jsonl") if json.loads(line)["kind"] == "restart"]
    assert restarts_at == [3]

    tables = restarts.main(["--part", "remora", "--lrs", "remora=3e-2", "--seeds", "1", *MODEL, "--max_iters", "6"])[
        "tables"]
    assert any("random permutations - remora share, alternating groupings" in line for line in tables)
    root = workdir / "out" / "compare" / "restarts-remora"
    for way, identity in (("random-permutations", False), ("alternating-groupings", True)):
        state = torch.load(root / f"remora-share-{way}" / "remora-lr0.03-seed1" / "ckpt.pt", weights_only=True)
        assert state["config"]["schedule"] == "cycle"  # both under the authors' schedule
        perm = next(v for k, v in state["model"].items() if k.endswith("in_perm"))
        assert torch.equal(perm, torch.arange(len(perm))) == identity  # the authors' variant permutes nothing
