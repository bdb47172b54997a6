"""train.py end to end on tiny configs (CPU, seconds each): every method learns, the schedule, the one training step,
restarts, resume, DDP, bad input.

    python -m pytest -q tests/test_train.py
"""

import contextlib
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import mora
import train

REPO = Path(__file__).resolve().parent.parent


def synthetic_corpus() -> str:
    """A corpus these tests make themselves, the same bytes on every platform (the bundled Python docs differ between
    Python versions, and so would every margin measured on them): 3,000 sentences of a random 40-word language where
    each word has 4 possible successors, about 120 KB. Written once into the temporary folder."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(40)]
    successors = {word: [rng.choice(words) for _ in range(4)] for word in words}
    sentences = []
    for _ in range(3000):
        sentence = [rng.choice(words)]
        for _ in range(rng.randint(4, 12)):
            sentence.append(rng.choice(successors[sentence[-1]]))
        sentences.append(" ".join(sentence).capitalize() + ".")
    text = "\n".join(sentences)
    path = Path(tempfile.gettempdir()) / f"mora-tests-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt"
    if not path.exists():
        path.with_suffix(".tmp").write_text(text)
        os.replace(path.with_suffix(".tmp"), path)
    return str(path)


CORPUS = synthetic_corpus()
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "8",
        "--eval_iters", "4", "--warmup", "5", "--lr", "1e-2", "--log_interval", "1", "--data", CORPUS]


class ReversedShare(mora.Share):
    """A compression of a fork's own, for --compress test_train:ReversedShare: sharing on the reversed input."""

    def f_comp(self, x):
        return super().f_comp(x.flip(-1))


def tiny(*flags: str) -> list[str]:
    """TINY, then flags, with --rank 2 for an adapter method (train.py refuses a rank for full training)."""
    method = flags[flags.index("--method") + 1] if "--method" in flags else "mora"
    return TINY + ([] if method == "full" else ["--rank", "2"]) + list(flags)


def run(out_dir: Path, *args: str) -> dict:
    return train.main(tiny("--out_dir", str(out_dir), *args))


def records(out_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, open(out_dir / "metrics.jsonl")) if r["kind"] == kind]


def tiny_model(method: str, *flags: str):
    """The model train.main would start from with these flags, and its args."""
    args = train.parse_args(tiny("--method", method, *flags))
    torch.manual_seed(args.seed)
    return train.build_model(args)[0], args


def with_random_adapters(model):
    with torch.no_grad():
        for layer in mora.adapter_layers(model).values():
            for p in [p for p in layer.parameters() if p.requires_grad]:
                p.normal_(std=0.05)
    return model


# Every method learns; fine-tuned, the adapters alone do -------------------------------------------------------------

@pytest.mark.parametrize("method", train.METHODS)
def test_every_method_learns(tmp_path, method):
    restarts = ["--merge_every", "20"] if method in train.RESTART_METHODS else []
    summary = run(tmp_path, "--method", method, "--max_iters", "60", "--eval_interval", "30", *restarts)
    evals = records(tmp_path, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"], evals
    assert summary["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert len(records(tmp_path, "train")) == 60
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 60 and checkpoint["config"]["method"] == method


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> str:
    """A tiny GPT pretrained in full for 300 steps on the test corpus: past the plateau of single-letter frequencies
    (val loss 5.56 -> 3.00), so its features carry context that adapters can reshape."""
    out_dir = tmp_path_factory.mktemp("base")
    run(out_dir, "--method", "full", "--max_iters", "300", "--eval_interval", "300")
    return str(out_dir / "ckpt.pt")


@pytest.mark.parametrize("method", ["lora", "mora", "relora", "remora"])
def test_adapters_alone_learn_what_the_base_does_not_know(tmp_path, method, base_checkpoint):
    """Fine-tuned on a sentence the base never saw, the adapters alone (in pretraining the embeddings learn too, and
    could hide adapters that learn nothing) lower its validation loss by more than 5% in 40 steps (measured: 10-12%;
    full fine-tuning: 37%); no weight outside the adapted layers moves, and every adapted layer's weight does."""
    (tmp_path / "new.txt").write_text("The quick brown fox jumps over the lazy dog. " * 300)
    restarts = ["--merge_every", "15"] if method in train.RESTART_METHODS else []
    summary = run(tmp_path, "--method", method, "--init_from", base_checkpoint, "--max_iters", "40", "--lr", "3e-2",
                  "--eval_interval", "40", "--data", str(tmp_path / "new.txt"), *restarts)
    evals = records(tmp_path, "eval")
    assert evals[-1]["val_loss"] < 0.95 * evals[0]["val_loss"], evals
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert summary["trainable_params"] == sum(v.numel() for k, v in checkpoint["model"].items()
                                              if k.endswith((".M", ".lora_A", ".lora_B")))
    base = torch.load(base_checkpoint, weights_only=True)["model"]
    args = train.parse_args(tiny("--method", method, "--init_from", base_checkpoint))
    model = train.build_model(args)[0]
    model.load_state_dict(checkpoint["model"])
    adapted = mora.adapter_layers(model)
    for name, tensor in model.state_dict().items():  # a restart merges into an adapted layer's W0: only there
        if not any(name.startswith(f"{layer}.") for layer in adapted):
            assert torch.equal(tensor, base[name]), name
    for name, layer in adapted.items():
        assert (layer.weight - base[f"{name}.weight"]).norm() > 1e-3 * base[f"{name}.weight"].norm(), name


def test_adapter_pretraining_trains_embeddings_norms_head_and_adapters_only():
    model, _ = tiny_model("mora")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.endswith(".M") or name.startswith(("wte.", "wpe.", "ln_f.")) or ".ln_" in name
               for name in trainable)
    assert sum(name.endswith(".M") for name in trainable) == 2 * 6  # 6 projections per block
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.ln_1.weight"} <= trainable


# The schedule, the one step, restarts ----------------------------------------------------------------------------

def test_schedule_values():
    args = train.parse_args(["--lr", "0.1", "--warmup", "4", "--max_iters", "104", "--min_lr_ratio", "0.1",
                             "--method", "relora", "--merge_every", "30", "--restart_warmup", "5"])
    cosine = lambda it: 0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (it - 4) / 100)))
    assert [train.get_lr(it, args) for it in range(4)] == pytest.approx([0.02, 0.04, 0.06, 0.08])  # never 0
    assert train.get_lr(4, args) == pytest.approx(0.1) and train.get_lr(104, args) == pytest.approx(0.01)
    assert train.get_lr(29, args) == pytest.approx(cosine(29))
    for k in range(5):  # the first step after the restart at 30 runs at 1/6 of the envelope, the fifth at 5/6
        assert train.get_lr(30 + k, args) == pytest.approx(cosine(30 + k) * (k + 1) / 6)
    assert train.get_lr(35, args) == pytest.approx(cosine(35))
    args.method = "lora"
    assert train.get_lr(30, args) == pytest.approx(cosine(30))  # no restarts, no re-warmup


def test_cycle_schedule_values():
    """--schedule cycle, by hand: each restart re-warms into a fresh cosine from the rate the last cycle reached down to
    the floor at max_iters (the MoRA authors' callback; theirs is --min_lr_ratio 0)."""
    flags = ["--lr", "0.1", "--warmup", "4", "--max_iters", "104", "--method", "relora", "--merge_every", "30",
             "--restart_warmup", "5", "--schedule", "cycle"]
    half_cosine = lambda done, total: 0.5 * (1 + math.cos(math.pi * done / total))
    for ratio in ("0", "0.1"):
        args, floor = train.parse_args(flags + ["--min_lr_ratio", ratio]), 0.1 * float(ratio)
        first = lambda it: floor + (0.1 - floor) * half_cosine(it - 4, 100)
        assert [train.get_lr(it, args) for it in (0, 3, 4, 29)] == pytest.approx([0.02, 0.08, 0.1, first(29)])
        peak = first(29)  # the rate cycle 1 reached; cycle 2 spans steps 30..104, its warmup 5
        second = lambda it: floor + (peak - floor) * half_cosine(it - 35, 104 - 35)
        assert [train.get_lr(30 + k, args) for k in range(5)] == pytest.approx([peak * (k + 1) / 6 for k in range(5)])
        assert [train.get_lr(it, args) for it in (35, 50, 59)] == pytest.approx([peak, second(50), second(59)])
        peak = second(59)
        third = lambda it: floor + (peak - floor) * half_cosine(it - 65, 104 - 65)
        assert [train.get_lr(it, args) for it in (60, 65, 80)] == pytest.approx([peak / 6, peak, third(80)])
        assert train.get_lr(104, args) == pytest.approx(floor, abs=1e-12)
        args.method = "remora"
        assert train.get_lr(80, args) == pytest.approx(third(80))
        args.method = "lora"  # no restarts: the one cosine, as jagged
        assert train.get_lr(80, args) == pytest.approx(first(80))


def test_the_logged_rates_are_the_schedule(tmp_path):
    summary = run(tmp_path, "--method", "remora", "--max_iters", "24", "--eval_interval", "24", "--merge_every", "8",
                  "--restart_warmup", "2", "--schedule", "cycle", "--reset", "magnitude", "--min_lr_ratio", "0")
    args = train.parse_args(tiny("--method", "remora", "--max_iters", "24", "--merge_every", "8",
                                 "--restart_warmup", "2", "--schedule", "cycle", "--min_lr_ratio", "0"))
    assert [r["lr"] for r in records(tmp_path, "train")] == pytest.approx([train.get_lr(it, args) for it in range(24)])
    assert [r["iter"] for r in records(tmp_path, "restart")] == [8, 16] and math.isfinite(summary["final_val_loss"])
    steps = {int(s["step"]) for s in torch.load(tmp_path / "ckpt.pt", weights_only=True)["optimizer"]["state"].values()}
    assert steps == {24}  # --reset magnitude kept every step count (a drop would restart the adapters' at 16)


def test_compress_auto_switches_to_sharing_at_rank_128():
    assert train.parse_args(["--rank", "127"]).compress == "rotate"
    assert train.parse_args(["--rank", "128"]).compress == "share"
    assert train.parse_args(["--rank", "8", "--compress", "decouple"]).compress == "decouple"


def batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 257, (n, 32), generator=g)
    return x, torch.randint(0, 257, (n, 32), generator=g)


def test_gradient_accumulation_equals_one_bigger_batch():
    x, y = batch(8, 0)
    states = []
    for micro in ([(x, y)], [(x[:4], y[:4]), (x[4:], y[4:])], [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]):
        model, _ = tiny_model("mora")
        with_random_adapters(model)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        loss = train.train_step(model, optimizer, micro, contextlib.nullcontext(), lr=1.0, grad_clip=0.0)
        states.append((loss, {n: p.detach().clone() for n, p in model.named_parameters()}))
    for loss, params in states[1:]:
        torch.testing.assert_close(loss, states[0][0], atol=1e-6, rtol=0)
        for name, p in params.items():
            torch.testing.assert_close(p, states[0][1][name], atol=1e-6, rtol=1e-5)


def test_gradient_clipping_bounds_the_step():
    x, y = batch(8, 0)
    model, _ = tiny_model("full")
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train.train_step(model, optimizer, [(x, y)], contextlib.nullcontext(), lr=0.5, grad_clip=0.01)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(0.5 * 0.01, rel=1e-4)  # SGD: lr times the clipped norm


def trained_with_random_adapters(method: str):
    """A tiny model after one AdamW step, its adapters then made non-zero, with its optimizer and an input."""
    model, args = tiny_model(method)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    idx = torch.randint(0, 257, (2, 32))
    model(idx, idx)[1].backward()
    optimizer.step()
    return with_random_adapters(model), optimizer, idx


def adapter_params(model) -> list[torch.nn.Parameter]:
    return [p for layer in mora.adapter_layers(model).values() for p in layer.parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["relora", "remora"])
def test_restart_keeps_the_function_and_forgets_adapter_optimizer_state_only(method):
    model, optimizer, idx = trained_with_random_adapters(method)
    before = model(idx)[0]
    assert all(p in optimizer.state for p in adapter_params(model))
    train.restart_adapters(model, optimizer)
    torch.testing.assert_close(model(idx)[0], before, atol=1e-5, rtol=1e-5)  # the update moved into W0
    assert not any(p in optimizer.state for p in adapter_params(model))
    assert model.wte.weight in optimizer.state  # the embeddings keep their Adam moments
    assert all(torch.count_nonzero(layer.lora_B if method == "relora" else layer.M) == 0
               for layer in mora.adapter_layers(model).values())


@pytest.mark.parametrize("reset", ["random", "magnitude"])
def test_relora_pruning_keeps_the_step_and_the_largest_or_a_random_few_moments(reset):
    model, optimizer, idx = trained_with_random_adapters("relora")
    for p in adapter_params(model):  # distinct magnitudes (lora_A's are zero after one step: B started at zero)
        optimizer.state[p]["exp_avg"].copy_(torch.randn(p.shape))
        optimizer.state[p]["exp_avg_sq"].copy_(torch.randn(p.shape).square())
    old = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in adapter_params(model)}
    wte_before = optimizer.state[model.wte.weight]["exp_avg"].clone()
    before = model(idx)[0]
    train.restart_adapters(model, optimizer, reset)
    torch.testing.assert_close(model(idx)[0], before, atol=1e-5, rtol=1e-5)
    kept_total = 0
    for p, state in old.items():
        new = optimizer.state[p]
        assert new["step"] == state["step"]  # bias correction goes on: unlike a drop
        for key in ("exp_avg", "exp_avg_sq"):
            kept = new[key] != 0
            assert torch.equal(new[key][kept], state[key][kept])  # survivors unchanged, the rest zero
            if reset == "magnitude":  # the top 10% by |value|: every survivor above every pruned entry
                magnitude, n = state[key].abs().flatten(), state[key].numel()
                assert abs(int(kept.sum()) - n / 10) <= 1
                assert magnitude[kept.flatten()].min() > magnitude[~kept.flatten()].max()
            kept_total += int(kept.sum())
    n_total = 2 * sum(p.numel() for p in old)
    if reset == "random":  # 0.1% on average: a binomial count, far below 1%
        assert kept_total < 0.01 * n_total
    assert torch.equal(optimizer.state[model.wte.weight]["exp_avg"], wte_before)  # only adapters are pruned
    train.train_step(model, optimizer, [(idx, idx)], contextlib.nullcontext(), lr=1e-3, grad_clip=1.0)  # steps on


def test_restarts_happen_on_schedule(tmp_path):
    run(tmp_path, "--method", "remora", "--max_iters", "30", "--eval_interval", "30", "--merge_every", "10")
    assert [r["iter"] for r in records(tmp_path, "restart")] == [10, 20]


def test_a_diverged_run_stops_with_a_summary_instead_of_merging_nan(tmp_path):
    summary = run(tmp_path, "--method", "relora", "--lr", "1e30", "--max_iters", "40", "--merge_every", "10",
                  "--log_interval", "50")  # caught at the first restart, before its merge
    assert summary["diverged_at"] == 10 and math.isnan(summary["final_val_loss"])
    assert records(tmp_path, "diverged") == [{"kind": "diverged", "iter": 10}] and not records(tmp_path, "restart")


def test_a_compression_of_your_own_from_the_command_line(tmp_path):
    args = train.parse_args(tiny("--compress", "test_train:ReversedShare"))
    model = train.build_model(args)[0]
    assert all(type(layer.compression) is ReversedShare for layer in mora.adapter_layers(model).values())
    summary = run(tmp_path, "--compress", "test_train:ReversedShare", "--max_iters", "10", "--eval_interval", "10")
    assert summary["final_val_loss"] < summary["best_val_loss"] + 1e-9 and records(tmp_path, "eval")
    for spec in ("zip", "test_train:NoSuchClass", "no_such_module:Share"):
        with pytest.raises(train.UserError, match=f"--compress {spec}: neither one of"):
            train.build_model(train.parse_args(["--compress", spec]))


def test_a_compression_in_the_working_directory_imports_from_a_script_run_elsewhere(tmp_path):
    """python /path/to/train.py puts train.py's folder on sys.path, not the working directory where the fork's is."""
    (tmp_path / "my_file.py").write_text("import mora\n\n\nclass Mine(mora.Share):\n    pass\n")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *tiny("--compress", "my_file:Mine"), "--max_iters",
                             "2", "--eval_interval", "2", "--out_dir", "out"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(open(tmp_path / "out" / "metrics.jsonl").readline())["compress"] == "my_file:Mine"


@pytest.mark.parametrize("method,flag", [("mora", "--alpha=16"), ("full", "--alpha=16"), ("lora", "--compress=share"),
                                         ("full", "--rank=4"), ("full", "--targets=query"),
                                         ("lora", "--schedule=cycle"), ("mora", "--merge_every=10"),
                                         ("lora", "--reset=random"), ("mora", "--restart_warmup=3")])
def test_a_flag_the_method_does_not_use_is_refused(capsys, method, flag):
    name = flag.split("=")[0]
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--method", method, flag])
    assert stop.value.code == 2 and f"{name} does nothing with --method {method}" in capsys.readouterr().err
    owner = {"--alpha": "lora", "--compress": "mora", "--rank": "lora", "--targets": "mora", "--schedule": "relora",
             "--merge_every": "remora", "--reset": "relora", "--restart_warmup": "remora"}[name]
    train.parse_args(["--method", owner, flag])  # with a method that uses it: accepted


# Resume --------------------------------------------------------------------------------------------------------------

def test_resume_after_a_restart_equals_uninterrupted(tmp_path, monkeypatch):
    """The checkpoint at 15 comes after the restart at 10; the run then restarts again at 20, which draws new ReMoRA
    permutations from the torch RNG: a resume that forgot the RNG state would train other adapters."""
    args = ["--method", "remora", "--max_iters", "30", "--eval_interval", "15", "--merge_every", "10"]
    run(tmp_path / "straight", *args)
    real_get_lr = train.get_lr

    def interrupt_at_22(it, cfg):  # Ctrl-C in the middle of iteration 22
        if it == 22:
            raise KeyboardInterrupt
        return real_get_lr(it, cfg)

    monkeypatch.setattr(train, "get_lr", interrupt_at_22)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", *args)
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["iter_num"] == 15  # intact
    monkeypatch.setattr(train, "get_lr", real_get_lr)
    run(tmp_path / "resumed", *args, "--init_from", "resume")
    for kind, key in (("train", "loss"), ("eval", "val_loss"), ("restart", "iter")):
        straight = [(r["iter"], r[key]) for r in records(tmp_path / "straight", kind)]
        resumed = [(r["iter"], r[key]) for r in records(tmp_path / "resumed", kind)]
        assert resumed == straight


def test_resume_keeps_the_best_validation_loss(tmp_path):
    run(tmp_path, "--method", "mora", "--max_iters", "10", "--eval_interval", "5")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    train.save_checkpoint(str(tmp_path / "ckpt.pt"), {**checkpoint, "iter_num": 5, "best_val_loss": 0.125})
    summary = run(tmp_path, "--method", "mora", "--max_iters", "10", "--eval_interval", "5", "--init_from", "resume")
    assert summary["best_val_loss"] == 0.125


def test_finetune_from_a_pretrained_checkpoint_trains_adapters_only(tmp_path):
    run(tmp_path / "base", "--method", "full", "--max_iters", "20", "--eval_interval", "20")
    summary = train.main(["--method", "mora", "--rank", "2", "--init_from", str(tmp_path / "base" / "ckpt.pt"),
                          "--max_iters", "20", "--eval_interval", "20", "--eval_iters", "4",
                          "--out_dir", str(tmp_path / "ft")])
    checkpoint = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    assert checkpoint["config"]["n_embd"] == 32  # the architecture came from the pretrained model
    m_sizes = [v.numel() for k, v in checkpoint["model"].items() if k.endswith(".M")]
    assert summary["trainable_params"] == sum(m_sizes) and len(m_sizes) == 12
    with pytest.raises(train.UserError, match="start from a full one"):
        train.main(["--method", "lora", "--init_from", str(tmp_path / "ft" / "ckpt.pt"),
                    "--out_dir", str(tmp_path / "x")])


# DDP -----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["relora", "remora"])
def test_two_process_ddp_restarts_keep_every_rank_equal(tmp_path, method):
    """Each rank merges its own adapters at every restart and draws the fresh ones (ReLoRA's A, ReMoRA's
    permutations) from its own RNG: only if every rank draws the same do the ranks end with equal weights."""
    script = tmp_path / "run_and_save.py"  # train.py's main, then each rank saves its model
    script.write_text(f"""import os, sys, torch
sys.path.insert(0, {str(REPO)!r})
import train
loop = train.train
def train_and_save(run, args):
    result = loop(run, args)
    torch.save(run.raw_model.state_dict(), os.path.join(args.out_dir, f"rank{{run.rank}}.pt"))
    return result
train.train = train_and_save
train.main(sys.argv[1:])
""")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               *tiny("--method", method), "--device", "cpu", "--max_iters", "12", "--eval_interval", "6",
               "--merge_every", "4", "--out_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout and len(records(tmp_path, "restart")) == 2
    (summary,) = records(tmp_path, "summary")
    assert summary["val_loss_per_rank"][0] == summary["val_loss_per_rank"][1]
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first if isinstance(first[k], torch.Tensor))


def test_two_ranks_train_as_one_process_at_twice_the_batch(tmp_path):
    """Every step draws 2 B windows at once and each rank takes its own B; DDP averages the ranks' gradients. So two
    ranks at batch B train what one process at batch 2 B does, up to the order of float additions. A loop that gave
    every rank the same windows (rank 0's) would train other weights."""
    flags = tiny("--max_iters", "6", "--eval_interval", "6", "--device", "cpu")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *flags,
               "--batch_size", "4", "--out_dir", str(tmp_path / "two")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    train.main(flags + ["--batch_size", "8", "--out_dir", str(tmp_path / "one")])
    two, one = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True)["model"] for run in ("two", "one"))
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4, msg=key)


# Bad input: one clear line, nothing half-written -------------------------------------------------------------------

def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "missing.txt"), "--out_dir",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"train.py: error: --data {tmp_path / 'missing.txt'}: no such file"]


@pytest.mark.parametrize("content,message", [(None, "no such file"), (b"", "the file is empty"),
                                             (b"caf\xe9 au lait", "not UTF-8"),
                                             (b"too short " * 5, r"a batch needs --block_size \+ 2 = 34")])
def test_bad_data_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(train.UserError, match=message) as error:
        run(tmp_path / "out", "--data", str(path), "--max_iters", "2")
    assert str(error.value).startswith(f"--data {path}: ")  # names the file the user passed


def test_a_split_needs_two_tokens_past_a_block(tmp_path):
    """get_batch draws a window start below len - block_size - 1: a split of block_size + 1 tokens has none."""
    for size, fits in ((9, False), (10, True)):  # byte tokens: a folder's train.txt of 9 and 10, its val.txt of 10
        (tmp_path / "train.txt").write_bytes(b"abcdefghij"[:size])
        (tmp_path / "val.txt").write_bytes(b"klmnopqrst")
        flags = ["--data", str(tmp_path), "--block_size", "8", "--max_iters", "2"]
        if fits:
            assert math.isfinite(run(tmp_path / "out", *flags)["final_val_loss"])
        else:
            with pytest.raises(train.UserError, match=r"the train split has 9 tokens; a batch needs .* = 10"):
                run(tmp_path / "out", *flags)


def test_a_folder_is_its_own_split(tmp_path):
    """--data DIR: train on DIR/train.txt, validate on DIR/val.txt, byte for byte; each file is checked as --data is."""
    (tmp_path / "train.txt").write_text("def f(x):\n    return x\n" * 10)
    (tmp_path / "val.txt").write_text("class C: pass\n" * 10)
    data = train.prepare(train.parse_args(["--data", str(tmp_path), "--block_size", "8"]))
    assert bytes(data["train"].tolist()).decode() == "def f(x):\n    return x\n" * 10
    assert bytes(data["val"].tolist()).decode() == "class C: pass\n" * 10
    os.remove(tmp_path / "val.txt")
    with pytest.raises(train.UserError, match=f"--data {tmp_path / 'val.txt'}: no such file"):
        train.prepare(train.parse_args(["--data", str(tmp_path), "--block_size", "8"]))


@pytest.mark.parametrize("args,message", [(["--rank", "0"], "--rank: expected a positive int: '0'"),
                                          (["--method", "dora"], "--method: invalid choice"),
                                          (["--max_iters", "2.5"], "expected a positive int: '2.5'"),
                                          (["--seed", "2.5"], "--seed: expected an int: '2.5'"),
                                          (["--lr", "-1"], "--lr: expected a positive float: '-1'"),
                                          (["--bogus", "1"], "unrecognized arguments: --bogus")])
def test_bad_flags_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, *args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_large_numbers_in_scientific_notation():
    assert train.parse_args(["--max_iters", "5e3"]).max_iters == 5000


def test_a_target_that_matches_no_layer(tmp_path):
    with pytest.raises(train.UserError, match=r"--targets c_attn: target\(s\) \['c_attn'\] match no linear layer"):
        run(tmp_path, "--method", "mora", "--targets", "c_attn")


def test_unwritable_out_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(train.UserError, match="cannot write to --out_dir"):
        run(tmp_path / "a_file" / "out")


def test_resume_refuses_other_architecture_or_method_and_corrupt_files(tmp_path):
    run(tmp_path, "--method", "mora", "--max_iters", "10", "--eval_interval", "10")
    with pytest.raises(train.UserError, match=r"--method mora \(this run: lora\)"):
        run(tmp_path, "--method", "lora", "--init_from", "resume")
    with pytest.raises(train.UserError, match=r"--n_embd 32 \(this run: 64\)"):
        run(tmp_path, "--method", "mora", "--init_from", "resume", "--n_embd", "64")
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    with pytest.raises(train.UserError, match="corrupt or truncated"):
        run(tmp_path, "--method", "mora", "--init_from", "resume")
    with pytest.raises(train.UserError, match="no checkpoint at"):
        run(tmp_path / "empty", "--init_from", "resume")


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, {"iter_num": 1})

    def save_half_then_interrupt(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"iter_num": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"iter_num": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_unknown_tokenizer_offline_message():
    with pytest.raises(train.UserError, match="cannot load tiktoken encoding 'no_such_encoding'.*--tokenizer bytes"):
        train.get_tokenizer("no_such_encoding")


def test_batches_are_next_token_windows_of_the_corpus(tmp_path):
    args = train.parse_args(["--data", str(tmp_path / "abc.txt"), "--block_size", "8", "--batch_size", "5"])
    (tmp_path / "abc.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 20)
    data = train.prepare(args)
    assert len(data["train"]) + len(data["val"]) == 520 and len(data["val"]) == 52  # the last tenth, held out
    assert bytes(data["val"].tolist()).decode() == ("abcdefghijklmnopqrstuvwxyz" * 20)[-52:]
    x, y = train.get_batch(data["train"], args, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == y.shape == (5, 8)
    text = bytes(data["train"].tolist()).decode()  # byte tokens: the ids are the bytes
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert bytes(row_x + row_y[-1:]).decode() in text and row_y[:-1] == row_x[1:]  # y is x shifted by one


def test_each_rank_takes_its_own_share_of_one_draw():
    """torchrun: the ranks split one draw of world * batch_size windows, so one generator state resumes them all."""
    ids = (torch.arange(5000) % 250).numpy().astype("uint16")
    args = train.parse_args(["--block_size", "8", "--batch_size", "3"])
    shares = [train.get_batch(ids, args, torch.Generator().manual_seed(0), torch.device("cpu"), rank, 2)
              for rank in (0, 1)]
    args.batch_size = 6
    x, y = train.get_batch(ids, args, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(torch.cat([s[0] for s in shares]), x) and torch.equal(torch.cat([s[1] for s in shares]), y)
    assert not torch.equal(shares[0][0], shares[1][0])


def test_default_training_step_runs_every_layers_operators(monkeypatch):
    """python train.py --method mora: every adapted layer's f_comp and f_decomp run in the step, whichever route the
    layer takes (small layers build W0 + dW from them), and M gets its gradient through them."""
    model = train.build_model(train.parse_args(["--method", "mora", "--batch_size", "2"]))[0]
    called = []
    for name in ("f_comp", "f_decomp"):
        original = getattr(mora.Rotate, name)
        monkeypatch.setattr(mora.Rotate, name, lambda self, x, name=name, original=original:
                            called.append((name, id(self))) or original(self, x))
    with_random_adapters(model)
    idx = torch.randint(0, 257, (2, 128))
    model(idx, idx)[1].backward()
    layers = mora.adapter_layers(model).values()
    assert len(layers) == 4 * 6 and all(layer.dense for layer in layers)  # the default GPT's layers are small
    for name in ("f_comp", "f_decomp"):
        assert {id(layer.compression) for layer in layers} <= {i for n, i in called if n == name}
    assert all(layer.M.grad is not None and layer.M.grad.abs().sum() > 0 for layer in layers)


def test_finetune_gpt2_weights_with_its_bpe_tokenizer(tmp_path, tiny_gpt2_folder):
    """--init_from a HuggingFace GPT-2 folder (what --init_from gpt2 finds after its download)."""
    args = ["--method", "mora", "--rank", "2", "--init_from", tiny_gpt2_folder, "--block_size", "24",
            "--batch_size", "4", "--max_iters", "6", "--eval_interval", "3", "--eval_iters", "2"]
    summary = train.main(args + ["--out_dir", str(tmp_path / "ft")])
    checkpoint = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    config = checkpoint["config"]
    assert (config["n_embd"], config["block_size"], config["tokenizer"]) == (64, 24, "gpt2")  # from the weights
    assert checkpoint["model"]["wpe.weight"].shape == (24, 64)  # the context cropped by the flag
    m_sizes = [v.numel() for k, v in checkpoint["model"].items() if k.endswith(".M")]
    assert summary["trainable_params"] == sum(m_sizes) and len(m_sizes) == 12  # only the adapters train
    evals = records(tmp_path / "ft", "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    train.main(args + ["--out_dir", str(tmp_path / "ft"), "--init_from", "resume", "--max_iters", "8"])
    assert [e["iter"] for e in records(tmp_path / "ft", "eval")] == [0, 3, 6, 8]  # a fine-tune resumes too
    with pytest.raises(train.UserError, match="cropped, not extended"):
        train.main(["--method", "mora", "--init_from", tiny_gpt2_folder, "--block_size", "97",
                    "--out_dir", str(tmp_path / "x")])  # the tiny model has 96 positions
