"""
The paper's memorization experiment (§3, §5.1, Table 2): fine-tune a pretrained GPT on N random UUID pairs
"key:value" and measure how fast each method memorizes them, at equal trainable parameters.

    python memorize_uuid.py                              # CPU demo, one seed: LoRA r=8 vs MoRA r=8, ~8 minutes
    python memorize_uuid.py --methods lora,mora --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --tune_only        # 31 min
    python memorize_uuid.py --methods full --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --tune_only             # 16 min
    python memorize_uuid.py --methods full,lora,mora --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --seeds 1,2,3 --tag seeds
    python memorize_uuid.py --methods lora,mora --ranks 16 --lrs lora=1e-3:3e-3:1e-2:3e-2,mora=3e-3:1e-2:3e-2:1e-1
    python memorize_uuid.py --methods lora,mora --ranks 4,8,16,32 --tag ranks \
        --lrs lora=1e-3:3e-3:1e-2:3e-2,mora=3e-3:1e-2:3e-2:1e-1   # the rank sweep, after r = 4, 16, 32 as above
    python memorize_uuid.py --base out/full/ckpt.pt      # your own train.py checkpoint (--method full)
    python memorize_uuid.py --preset gpu                 # one GPU: GPT-2 (124M) from HuggingFace, 1,000 pairs

Without --base, the CPU preset first pretrains a small GPT with train.py on the bundled corpus (cached under
out/uuid/base-cpu/); the GPU preset fine-tunes GPT-2 ("gpt2", downloaded once by transformers; any GPT-2 name or
HuggingFace folder works as --base). Protocol: with several learning rates in --lrs, each (method, rank) picks the
rate with the highest mean character accuracy over the checkpoints on --tune_seed, which is never reported; the
--seeds runs then use that rate. Each seed draws its own pairs, adapter initialization and batch order. Every run
is saved under out/uuid/runs/ and not run again, so an interrupted sweep continues. Results: tables on stdout,
out/uuid/<tag>/results.json and, with matplotlib, out/uuid/<tag>/memorize_uuid.png.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import time
import uuid

import torch

import data
import mora
import train
from model import GPT

PRESETS = {  # the base model, the data and the schedule; flags override any of it
    "cpu": {"base": None, "methods": "lora,mora", "pairs": 64, "steps": 1200, "batch_size": 32, "eval_every": 100,
            "seeds": "1",
            "lrs": "full=3e-3,lora=1e-2,mora=3e-2"},  # the rates picked on seed 0 by the tuning command (docs)
    # 1,000 pairs x 122 random bits over GPT-2's 1.33M LoRA r=8 weights: 0.09 bits per parameter (paper: 0.06 at
    # LLaMA-2-7B; CPU preset: 0.19), 96 epochs (paper: about 100). Rates: the CPU picks divided by 768 / 144.
    "gpu": {"base": "gpt2", "methods": "full,lora,mora", "pairs": 1000, "steps": 1500, "batch_size": 64,
            "eval_every": 150, "seeds": "1,2,3",
            "lrs": "3e-4,1e-3,3e-3,1e-2"},
}
CPU_BASE = ["--n_layer", "2", "--n_head", "4", "--n_embd", "144", "--block_size", "80", "--max_iters", "600",
            "--batch_size", "32"]  # train.py flags of the CPU preset's base model
TARGETS = "query,key,value,output,up,down"
H100_FLOPS = 989e12 * 0.4  # bf16 dense peak of an H100 SXM, at 40% utilization: the assumption of the estimate
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# ^ the 97.5% quantile of Student's t with 1, 2, ..., 30 degrees of freedom (beyond: the normal's 1.96)


# ----------------------------------------------------------------------------------------------------------------------
# Data and metrics

def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n (key, value) pairs of random version-4 UUIDs, the same for the same seed."""
    rng = random.Random(seed)
    return [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            for _ in range(n)]


def encode(pairs: list[tuple[str, str]], enc, loss_on: str) -> dict:
    """Token ids of "key:" + value + <eot>, right-padded into one (N, L) tensor, and the next-token targets (N, L-1)
    with -1 (no loss) on the padding and, for loss_on="value", on everything before the value's first token.
    Under BPE a UUID takes a varying number of tokens, so the prompts keep their own lengths."""
    prompts = [enc.encode_ordinary(f"{key}:") for key, _ in pairs]
    answers = [enc.encode_ordinary(value) + [enc.eot_token] for _, value in pairs]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    sequences = torch.full((len(pairs), length), enc.eot_token)
    targets = torch.full((len(pairs), length - 1), -1)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids = torch.tensor(prompt + answer)
        sequences[i, :len(ids)] = ids
        first = len(prompt) - 1 if loss_on == "value" else 0  # target t is token t + 1: the value starts at prompt
        targets[i, first:len(ids) - 1] = ids[first + 1:]
    return {"sequences": sequences, "targets": targets, "prompts": prompts, "values": [v for _, v in pairs],
            "max_answer": max(map(len, answers))}


def char_accuracy(predicted: list[str], expected: list[str]) -> tuple[float, float]:
    """(fraction of value characters generated right, position by position; fraction of values exactly right)."""
    right = sum(sum(p == e for p, e in zip(pred, exp)) for pred, exp in zip(predicted, expected))
    total = sum(len(exp) for exp in expected)
    return right / total, sum(pred == exp for pred, exp in zip(predicted, expected)) / len(expected)


def format_floor(values: list[str]) -> float:
    """Character accuracy of the best single answer, the same for every key (at each position the most common
    character): what knowing only the format (dashes, the version digit) scores, with no fact memorized."""
    best = "".join(statistics.mode(column) for column in zip(*values))
    return char_accuracy([best] * len(values), values)[0]


def sustained_step(curve: list[dict], level: float) -> int | None:
    """The first checkpoint from which the accuracy stays at or above `level` to the end; None if it ends below."""
    step = None
    for point in curve:
        if point["char_acc"] < level:
            step = None
        elif step is None:
            step = point["step"]
    return step


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def spread_text(s: dict, show, with_range: bool = True) -> str:
    """'mean ± std (min-max)' of a spread(); for one seed, a demo, the value alone: there is no spread to show."""
    if s["n"] == 1:
        return show(s["mean"])
    return f"{show(s['mean'])} ± {show(s['std'])}" + (f" ({show(s['min'])}-{show(s['max'])})" if with_range else "")


def interval_text(d: dict, show) -> str:
    """The 95% interval of a paired_difference(); one seed has none."""
    return f"{show(d['ci95'][0])} to {show(d['ci95'][1])}" if d["n"] > 1 else "none: one seed"


def paired_difference(a: list[float], b: list[float]) -> dict:
    """a - b, paired by seed: mean, the 95% Student-t interval of the mean (none for one pair), min and max."""
    diffs = [x - y for x, y in zip(a, b)]
    summary = spread(diffs)
    n = len(diffs)
    t = T_975[n - 2] if n - 2 < len(T_975) else 1.96
    half = t * summary["std"] / math.sqrt(n) if n > 1 else math.nan
    return {**summary, "ci95": (summary["mean"] - half, summary["mean"] + half), "diffs": diffs}


def spectrum_stats(delta: torch.Tensor, threshold: float) -> dict | None:
    """Singular values of a weight update: how many exceed `threshold` (the paper's §6.1 count) and the effective
    rank exp(entropy of the normalized singular values) (Roy & Vetterli 2007). None if the run diverged."""
    if not torch.isfinite(delta).all():
        return None
    s = torch.linalg.svdvals(delta.double())
    p = s / s.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"above_threshold": int((s > threshold).sum()), "effective_rank": math.exp(entropy),
            "singular_values": s.tolist()}


def mean_accuracy(run: dict) -> float:
    return statistics.fmean(point["char_acc"] for point in run["curve"])


# ----------------------------------------------------------------------------------------------------------------------
# Base model, fine-tuning, evaluation

def load_base(args) -> dict:
    """The base model's config, weights and tokenizer. The CPU preset pretrains its own once with train.py."""
    source = args.base or PRESETS[args.preset]["base"]
    if source is None:
        out_dir = os.path.join("out", "uuid", "base-cpu")
        source = os.path.join(out_dir, "ckpt.pt")
        metrics = os.path.join(out_dir, "metrics.jsonl")
        if not (os.path.exists(metrics) and any(json.loads(line)["kind"] == "summary" for line in open(metrics))):
            print(f"pretraining the CPU base model into {out_dir} (once; later runs reuse it)")
            train.main(CPU_BASE + ["--method", "full", "--out_dir", out_dir])
    model, own = train.load_pretrained(source, dropout=0.0, flag="--base")
    tokenizer = train.pretrained_tokenizer(args.tokenizer, own, model, f"--base {source}")
    return {"source": source, "config": model.config, "state": model.state_dict(), "tokenizer": tokenizer,
            "params": model.num_params()}


@torch.no_grad()
def evaluate(model: GPT, examples: dict, enc, ctx, batch: int = 512) -> tuple[float, float]:
    """Greedy-decode the value after every "key:" prompt (prompts of one length at a time) and score it."""
    model.eval()
    device = next(model.parameters()).device
    predicted = [""] * len(examples["prompts"])
    by_length = {}
    for i, prompt in enumerate(examples["prompts"]):
        by_length.setdefault(len(prompt), []).append(i)
    for length, rows in by_length.items():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            prompts = torch.tensor([examples["prompts"][i] for i in chunk], device=device)
            with ctx:
                out = model.generate(prompts, max_new_tokens=examples["max_answer"], temperature=0)
            for i, tokens in zip(chunk, out[:, length:].tolist()):
                tokens = tokens[:tokens.index(enc.eot_token)] if enc.eot_token in tokens else tokens
                predicted[i] = enc.decode(tokens)
    model.train()
    return char_accuracy(predicted, examples["values"])


def finetune(base: dict, method: str, rank: int, lr: float, seed: int, args, enc, device, ctx, label: str) -> dict:
    """One fine-tuning run on the pairs of `seed`; returns its accuracy curve and the spectra of its updates."""
    cfg = train.parse_args(["--method", method, "--rank", str(rank), "--compress", args.compress, "--targets", TARGETS,
                            "--lr", str(lr), "--max_iters", str(args.steps), "--warmup", str(args.steps // 20),
                            "--weight_decay", "0", "--seed", str(seed)])
    examples = encode(make_pairs(args.pairs, seed), enc, args.loss_on)
    if examples["sequences"].shape[1] > base["config"].block_size:
        raise train.UserError(f"--base {base['source']} has block_size {base['config'].block_size}; a key:value "
                              f"example needs {examples['sequences'].shape[1]}")
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(base["config"]))
    model.load_state_dict(base["state"])
    linears = {name: m.weight.detach().clone() for name, m in model.named_modules()
               if name.rsplit(".", 1)[-1] in TARGETS.split(",")}  # the weights before fine-tuning
    model = train.adapt(model, cfg.adapter, pretraining=False).to(device)
    optimizer = model.configure_optimizers(0.0, lr, (0.9, 0.99), device.type)
    no_scaling = torch.amp.GradScaler(device.type, enabled=False)  # bf16 or fp32 only
    order = torch.Generator().manual_seed(seed)
    batches = torch.randperm(args.pairs, generator=order)
    curve, t0, loss = [], time.time(), None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            char_acc, exact = evaluate(model, examples, enc, ctx)
            curve.append({"step": step, "char_acc": char_acc, "exact_match": exact, "loss": loss})
            eta = (time.time() - t0) / max(step, 1) * (args.steps - step)
            print(f"{label}: step {step}/{args.steps}, loss {'-' if loss is None else f'{loss:.3f}'}, "
                  f"char acc {100 * char_acc:.1f}%, exact {100 * exact:.1f}%, eta {train.format_time(eta)}", flush=True)
        if step == args.steps:
            break
        if len(batches) < args.batch_size:  # a new epoch, in a new order
            batches = torch.cat((batches, torch.randperm(args.pairs, generator=order)))
        idx, batches = batches[:args.batch_size], batches[args.batch_size:]
        for group in optimizer.param_groups:
            group["lr"] = train.get_lr(step, cfg)
        with ctx:
            _, loss_tensor = model(examples["sequences"][idx, :-1].to(device), examples["targets"][idx].to(device))
        loss_tensor.backward()
        train.optimizer_step(model, optimizer, no_scaling, cfg.train.grad_clip)
        loss = loss_tensor.item()

    adapters = mora.adapter_layers(model)
    deltas = {name: (adapters[name].delta_weight() if name in adapters else model.get_submodule(name).weight - w0)
              for name, w0 in linears.items()}
    return {"method": method, "rank": rank if method != "full" else None, "lr": lr, "seed": seed,
            "trainable_params": mora.count_trainable(model), "curve": curve, "wall_time_s": time.time() - t0,
            "format_floor": format_floor(examples["values"]), "tokens_per_example": examples["sequences"].shape[1],
            "spectra": {name: spectrum_stats(d.detach().float().cpu(), args.sv_threshold)
                        for name, d in deltas.items()}}


def cached_run(base: dict, method: str, rank: int, lr: float, seed: int, args, *rest) -> dict:
    """finetune(), or its saved result if this exact run finished before (an interrupted sweep continues)."""
    settings = {"base": base["source"], "tokenizer": base["tokenizer"], "method": method, "rank": rank, "lr": lr,
                "seed": seed, **{k: getattr(args, k) for k in ("pairs", "steps", "batch_size", "eval_every", "loss_on",
                                                               "compress", "dtype", "sv_threshold")}}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join("out", "uuid", "runs", f"{method}-r{rank}-lr{lr:g}-seed{seed}-{key}.json")
    if os.path.exists(path):
        return json.load(open(path))["run"]
    run = finetune(base, method, rank, lr, seed, args, *rest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"settings": settings, "run": run}, f)
    os.replace(path + ".tmp", path)  # a half-written result is never read back
    return run


def estimate_flops(base: dict, args, tokens_per_example: int, n_runs: int) -> float:
    """6 N per trained token (forward + backward; an upper bound for adapters, which skip the frozen weights'
    gradients) and 2 N per token of greedy generation at each checkpoint; attention's extra terms are left out."""
    train_tokens = args.steps * args.batch_size * tokens_per_example
    eval_tokens = (args.steps // args.eval_every + 1) * args.pairs * tokens_per_example
    return n_runs * base["params"] * (6 * train_tokens + 2 * eval_tokens)


# ----------------------------------------------------------------------------------------------------------------------
# The sweep: tune on one seed, report on others

def parse_lrs(text: str, methods: list[str]) -> dict[str, list[float]]:
    """'1e-2,3e-2': one grid for every method; 'lora=3e-3:1e-2,mora=3e-2': a grid (or one fixed rate) per method."""
    try:
        if "=" not in text:
            return {m: [float(lr) for lr in text.split(",")] for m in methods}
        grids = {m: [float(lr) for lr in lrs.split(":")] for m, lrs in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise train.UserError(f"--lrs {text} is not a learning-rate grid: write '1e-3,1e-2' (every method) or "
                              f"'lora=1e-3:1e-2,mora=3e-2' (per method)") from None
    missing = [m for m in methods if m not in grids]
    if missing:
        raise train.UserError(f"--lrs {text} gives no rate for {missing}")
    return grids


def pick_rate(grid: list[float], scores: list[float]) -> tuple[float, str | None]:
    """The rate with the highest score, and a warning if it lacks a tried, worse neighbour on both sides."""
    best = max(range(len(grid)), key=scores.__getitem__)
    edge = len(grid) > 1 and (best == 0 or best == len(grid) - 1)
    return grid[best], f"its best rate {grid[best]:g} is at the edge of the grid {grid}; widen it" if edge else None


def name_of(method: str, rank: int | None) -> str:
    return method if method == "full" else f"{method} r={rank}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summarize(groups: dict, seeds: list[int], steps: list[int]) -> dict:
    """Per (method, rank): accuracy over seeds at each checkpoint, the sustained-90% steps, mean accuracy per seed."""
    summary = {}
    for (method, rank), runs in groups.items():
        summary[method, rank] = {
            "lr": runs[0]["lr"], "trainable_params": runs[0]["trainable_params"],
            "char_acc": {s: spread([r["curve"][i]["char_acc"] for r in runs]) for i, s in enumerate(steps)},
            "exact_match": {s: spread([r["curve"][i]["exact_match"] for r in runs]) for i, s in enumerate(steps)},
            "reach_90": [sustained_step(r["curve"], 0.9) for r in runs],
            "mean_acc": [mean_accuracy(r) for r in runs], "seeds": seeds}
    return summary


def report(summary: dict, tuning: list[str], floor: float, steps: list[int]) -> list[str]:
    shown = sorted({steps[len(steps) // 4], steps[len(steps) // 2], steps[3 * len(steps) // 4], steps[-1]})
    n = next(iter(summary.values()))["char_acc"][steps[0]]["n"]
    over = "on one seed (a demo: no spread)" if n == 1 else f"mean ± std (min-max) over {n} seeds"
    lines = [f"Character accuracy (%), {over}; format floor {pct(floor)}%, exact-match floor 0%:", "",
             "| method | trainable | lr | " + " | ".join(f"step {s}" for s in shown)
             + " | final exact match | stays >= 90% from step: median (range) |", "|---" * (len(shown) + 5) + "|"]
    for (method, rank), row in summary.items():
        cells = [spread_text(row["char_acc"][s], pct) for s in shown]
        crossing = reach_summary(row["reach_90"])
        exact = row["exact_match"][steps[-1]]
        lines.append(f"| {name_of(method, rank)} | {row['trainable_params']:,} | {row['lr']:g} | " + " | ".join(cells)
                     + f" | {spread_text(exact, pct, with_range=False)} | {crossing} |")
    pairs = [(m, r) for m, r in summary if m == "mora" and ("lora", r) in summary]
    if pairs:
        lines += ["", "Paired difference MoRA - LoRA of the mean character accuracy over checkpoints (points), per "
                      "seed:", "", "| rank | mean | 95% interval | min-max | per seed |", "|---|---|---|---|---|"]
        for _, rank in pairs:
            d = paired_difference(summary["mora", rank]["mean_acc"], summary["lora", rank]["mean_acc"])
            lines.append(f"| {rank} | {pct(d['mean'])} | {interval_text(d, pct)} | "
                         f"{pct(d['min'])} to {pct(d['max'])} | {', '.join(pct(x) for x in d['diffs'])} |")
    return lines + ([""] + tuning if tuning else [])


def reach_summary(steps: list[int | None]) -> str:
    """Median (min-max) over seeds of the sustained-crossing step; a seed that never stays above counts as infinite."""
    values = sorted(math.inf if s is None else s for s in steps)
    show = lambda v: "not reached" if v == math.inf else f"{v:g}"
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(values[0])}-{show(values[-1])})"


def spectra_lines(runs: list[dict]) -> list[str]:
    lines = ["| method | seed | singular values > threshold, mean per layer | effective rank, mean per layer |",
             "|---|---|---|---|"]
    for run in runs:
        stats = [s for s in run["spectra"].values() if s is not None]
        values = (f"{statistics.fmean(s['above_threshold'] for s in stats):.1f} | "
                  f"{statistics.fmean(s['effective_rank'] for s in stats):.1f}") if stats else "diverged | diverged"
        lines.append(f"| {name_of(run['method'], run['rank'])} | {run['seed']} | {values} |")
    return lines


def pyplot():
    """matplotlib.pyplot drawing to files, or None without matplotlib (figures are optional)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)  # never a half-written figure


def plot(summary: dict, floor: float, steps: list[int], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    ranks = sorted({r for _, r in summary if r is not None})
    fig, axes = plt.subplots(1, 2 if len(ranks) > 1 else 1, figsize=(12 if len(ranks) > 1 else 6.5, 4.5),
                             squeeze=False)
    curves = axes[0][0]
    for (method, rank), row in summary.items():
        if len(ranks) > 1 and rank not in (None, 8):
            continue
        mean = [100 * row["char_acc"][s]["mean"] for s in steps]
        line, = curves.plot(steps, mean, marker="o", ms=3, label=f"{name_of(method, rank)} (lr {row['lr']:g})")
        curves.fill_between(steps, [100 * row["char_acc"][s]["min"] for s in steps],
                            [100 * row["char_acc"][s]["max"] for s in steps], color=line.get_color(), alpha=0.2)
    curves.axhline(100 * floor, color="gray", ls="--", label="format floor")
    curves.set(xlabel="fine-tuning step", ylabel="character accuracy (%), mean and min-max over seeds",
               title="UUID memorization", ylim=(0, 101))
    if len(ranks) > 1:
        sweep = axes[0][1]
        for method, color in (("lora", "tab:blue"), ("mora", "tab:red")):
            rows = [summary[method, r] for r in ranks if (method, r) in summary]
            for step, style in ((steps[len(steps) // 2], "--"), (steps[-1], "-")):
                sweep.semilogx([row["trainable_params"] for row in rows],
                               [100 * row["char_acc"][step]["mean"] for row in rows], style, marker="o",
                               color=color, label=f"{method} at step {step}")
        sweep.axhline(100 * floor, color="gray", ls="--")
        sweep.set(xlabel=f"trainable parameters (r = {', '.join(map(str, ranks))})", ylabel="character accuracy (%)",
                  title="accuracy against budget", ylim=(0, 101))
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sizes for a laptop CPU or one GPU")
    parser.add_argument("--base", help="train.py full checkpoint, GPT-2 name or HuggingFace folder; default: preset's")
    parser.add_argument("--tokenizer", default="auto", help="auto: the base model's; another must fit its vocabulary")
    parser.add_argument("--methods", help="comma-separated: full, lora, mora; default: the preset's")
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks (MoRA gets the same budgets)")
    parser.add_argument("--compress", default="auto", choices=("auto", *mora.COMPRESSIONS), help="MoRA compression")
    parser.add_argument("--lrs", help="a grid tuned on --tune_seed ('3e-3,1e-2'), or per method 'lora=1e-3:1e-2,...'")
    parser.add_argument("--tune_seed", type=train.integer, default=0, help="seed for picking rates; never reported")
    parser.add_argument("--seeds", help="comma-separated seeds to report (not the tuning seed)")
    parser.add_argument("--tune_only", action="store_true", help="stop after tuning (the sweep continues later)")
    parser.add_argument("--pairs", type=train.positive(train.integer), help="number of UUID pairs to memorize")
    parser.add_argument("--steps", type=train.positive(train.integer), help="fine-tuning steps")
    parser.add_argument("--batch_size", type=train.positive(train.integer), help="pairs per step")
    parser.add_argument("--eval_every", type=train.positive(train.integer), help="steps between accuracy checkpoints")
    parser.add_argument("--loss_on", default="all", choices=("all", "value"), help="tokens in the loss (paper: all)")
    parser.add_argument("--sv_threshold", type=float, default=0.1, help="singular values counted above this (§6.1)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: bfloat16 autocast on GPUs that support it")
    parser.add_argument("--tag", help="results folder under out/uuid/; default: the preset's name")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("methods", "pairs", "steps", "batch_size", "eval_every", "lrs", "seeds"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    methods = args.methods.split(",")
    if not set(methods) <= {"full", "lora", "mora"}:
        parser.error(f"--methods takes full, lora and mora, got {args.methods}")
    ranks, seeds = [int(r) for r in args.ranks.split(",")], [int(s) for s in args.seeds.split(",")]
    if args.tune_seed in seeds:
        parser.error(f"--seeds {args.seeds} contains --tune_seed {args.tune_seed}: the seed rates are picked on "
                     f"is not reported")
    grids = parse_lrs(args.lrs, methods)
    out_dir = os.path.join("out", "uuid", args.tag or args.preset)
    os.makedirs(out_dir, exist_ok=True)

    device, ctx, dtype = train.setup_device(args.device, args.dtype)
    base = load_base(args)
    enc = data.get_tokenizer(base["tokenizer"])
    plan = [(m, r) for m in methods for r in ([None] if m == "full" else ranks)]
    n_tuning = sum(len(grids[m]) for m, _ in plan if len(grids[m]) > 1)
    length = encode(make_pairs(args.pairs, seeds[0]), enc, args.loss_on)["sequences"].shape[1]
    flops = estimate_flops(base, args, length, n_tuning + len(plan) * len(seeds))
    print(f"{args.pairs} UUID pairs ({length} tokens each with padding), {args.steps} steps of {args.batch_size}, "
          f"base {base['source']} ({base['params']:,} parameters), seeds {seeds}, tuning seed {args.tune_seed}, "
          f"{n_tuning + len(plan) * len(seeds)} runs: about {flops / 1e15:.1f} PFLOP, "
          f"{flops / H100_FLOPS / 60:.1f} minutes on one H100 at 40% of its bf16 peak (an estimate)")

    def run(method, rank, lr, seed, label):
        return cached_run(base, method, rank or 8, lr, seed, args, enc, device, ctx, label)

    groups, tuning, all_runs = {}, [], []
    for method, rank in plan:
        grid = grids[method]
        lr = grid[0]
        if len(grid) > 1:
            tuned = [run(method, rank, g, args.tune_seed, f"[tune] {name_of(method, rank)} lr={g:g}") for g in grid]
            lr, warning = pick_rate(grid, [mean_accuracy(t) for t in tuned])
            tuning.append(f"tuning seed {args.tune_seed}, {name_of(method, rank)}: mean accuracy over checkpoints "
                          + ", ".join(f"{pct(mean_accuracy(t))}% at {g:g}" for t, g in zip(tuned, grid))
                          + f"; picked {lr:g}" + (f". WARNING: {warning}" if warning else ""))
            print(tuning[-1])
        if args.tune_only:
            continue
        groups[method, rank] = [run(method, rank, lr, s, f"{name_of(method, rank)} lr={lr:g} seed {s}") for s in seeds]
        all_runs += groups[method, rank]

    if args.tune_only:
        return {"tuning": tuning}
    steps = [point["step"] for point in all_runs[0]["curve"]]
    floor = statistics.fmean(r["format_floor"] for r in all_runs)
    summary = summarize(groups, seeds, steps)
    lines = report(summary, tuning, floor, steps) + [""] + spectra_lines(all_runs)
    print("\n" + "\n".join(lines))
    results = {"args": vars(args), "base": base["source"], "dtype": dtype, "estimated_flops": flops,
               "format_floor": floor, "tables": lines, "runs": all_runs,
               "summary": [{"method": m, "rank": r, **row} for (m, r), row in summary.items()]}
    with open(os.path.join(out_dir, "results.json.tmp"), "w") as f:
        json.dump(results, f)
    os.replace(os.path.join(out_dir, "results.json.tmp"), os.path.join(out_dir, "results.json"))
    figure = os.path.join(out_dir, "memorize_uuid.png")
    print(f"\nresults: {out_dir}/results.json" + (f", figure: {figure}" if plot(summary, floor, steps, figure) else
                                                   " (pip install matplotlib for the figure)"))
    return results


if __name__ == "__main__":
    try:
        main()
    except (train.UserError, data.DataError) as e:
        raise SystemExit(f"memorize_uuid.py: error: {e}")
