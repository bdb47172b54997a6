"""
The paper's memorization experiment (§3, §5.1, Table 2): fine-tune a pretrained GPT on N random UUID pairs
"key:value" and measure how fast each method memorizes them, at equal trainable parameters.

    python memorize_uuid.py                                  # CPU preset: full, LoRA r=8, MoRA r=8; under 10 minutes
    python memorize_uuid.py --methods lora,mora --lrs 1e-2   # a quicker look, one learning rate
    python memorize_uuid.py --pairs 512 --steps 2000         # more facts, longer
    python memorize_uuid.py --base out/full/ckpt.pt          # fine-tune your own train.py checkpoint (--method full)
    python memorize_uuid.py --preset gpu                     # one H100/H200: 10,000 pairs, a larger base

Without --base, a small base GPT is pretrained first with train.py's own code on the bundled corpus and cached under
out/uuid/base-<preset>/. Every method trains with the same steps, batch and schedule, at each learning rate of the
same grid; each is reported at its best rate (highest mean character accuracy over the checkpoints, i.e. the fastest
memorizer). Results: a Table-2-style table and a rank table on stdout, every run in out/uuid/<tag>/results.json, and,
when matplotlib is installed, out/uuid/<tag>/memorize_uuid.png.
"""

import argparse
import json
import math
import os
import random
import time
import uuid
from dataclasses import asdict

import torch

import data
import mora
import train
from model import GPT, GPTConfig

# Each preset: the base model (train.py flags), the data and the fine-tuning schedule. Flags override any of it.
PRESETS = {
    "cpu": {"base": ["--n_layer", "2", "--n_head", "4", "--n_embd", "144", "--block_size", "80", "--max_iters", "600",
                     "--batch_size", "32"],
            "pairs": 64, "steps": 1200, "batch_size": 32, "eval_every": 100, "lrs": "1e-2,3e-2"},
    "gpu": {"base": ["--n_layer", "8", "--n_head", "9", "--n_embd", "576", "--block_size", "80", "--max_iters", "5000",
                     "--lr", "2e-3", "--batch_size", "128", "--eval_interval", "1000"],
            "pairs": 10000, "steps": 3000, "batch_size": 128, "eval_every": 300, "lrs": "1e-4,3e-4,1e-3,3e-3"},
}
TARGETS = "query,key,value,output,up,down"


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n (key, value) pairs of random version-4 UUIDs, the same for the same seed."""
    rng = random.Random(seed)
    return [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            for _ in range(n)]


def char_accuracy(predicted: list[str], expected: list[str]) -> tuple[float, float]:
    """(fraction of value characters generated right, position by position; fraction of values exactly right)."""
    right = sum(sum(p == e for p, e in zip(pred, exp)) for pred, exp in zip(predicted, expected))
    total = sum(len(exp) for exp in expected)
    return right / total, sum(pred == exp for pred, exp in zip(predicted, expected)) / len(expected)


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


def build_base(preset: str, flags: list[str]) -> str:
    """Pretrain (once) the preset's base GPT with train.py on the bundled corpus; return its checkpoint path."""
    out_dir = os.path.join("out", "uuid", f"base-{preset}")
    path = os.path.join(out_dir, "ckpt.pt")
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(metrics) and any(json.loads(line)["kind"] == "summary" for line in open(metrics)):
        return path
    print(f"pretraining the {preset} base model into {out_dir} (once; later runs reuse it)")
    train.main(flags + ["--method", "full", "--out_dir", out_dir])
    return path


@torch.no_grad()
def evaluate(model: GPT, prompts: torch.Tensor, values: list[str], enc, ctx, batch: int = 512) -> tuple[float, float]:
    """Greedy-decode the value after every "key:" prompt and score it against the true value."""
    model.eval()
    predicted = []
    for i in range(0, len(prompts), batch):
        with ctx:
            out = model.generate(prompts[i:i + batch], max_new_tokens=36, temperature=0)
        predicted += [enc.decode([t for t in row if t < 256]) for row in out[:, prompts.shape[1]:].tolist()]
    model.train()
    return char_accuracy(predicted, values)


def finetune(base: dict, method: str, rank: int, lr: float, args, examples: torch.Tensor, prompts: torch.Tensor,
             values: list[str], enc, device, ctx, label: str) -> dict:
    """One fine-tuning run; returns its accuracy curve and the spectra of its weight updates."""
    cfg = train.parse_args(["--method", method, "--rank", str(rank), "--compress", args.compress, "--targets", TARGETS,
                            "--lr", str(lr), "--max_iters", str(args.steps), "--warmup", str(args.steps // 20),
                            "--weight_decay", "0", "--seed", str(args.seed)])
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(**base["config"]["model"]))
    model.load_state_dict(base["model"])
    linears = {name: m.weight.detach().clone() for name, m in model.named_modules()
               if name.rsplit(".", 1)[-1] in TARGETS.split(",")}  # the weights before fine-tuning
    model = train.adapt(model, cfg.adapter, pretraining=False).to(device)
    optimizer = model.configure_optimizers(0.0, lr, (0.9, 0.99), device.type)
    no_scaling = torch.amp.GradScaler(device.type, enabled=False)  # no float16 here
    n_trainable = mora.count_trainable(model)
    order = torch.Generator().manual_seed(args.seed)
    batches = torch.randperm(len(examples), generator=order)
    curve, t0, loss = [], time.time(), None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            char_acc, exact = evaluate(model, prompts, values, enc, ctx)
            curve.append({"step": step, "char_acc": char_acc, "exact_match": exact, "loss": loss})
            eta = (time.time() - t0) / max(step, 1) * (args.steps - step)
            print(f"{label}: step {step}/{args.steps}, loss {'-' if loss is None else f'{loss:.3f}'}, "
                  f"char acc {100 * char_acc:.1f}%, "
                  f"exact {100 * exact:.1f}%, eta {train.format_time(eta)}", flush=True)
        if step == args.steps:
            break
        if len(batches) < args.batch_size:  # a new epoch, in a new order
            batches = torch.cat((batches, torch.randperm(len(examples), generator=order)))
        idx, batches = batches[:args.batch_size], batches[args.batch_size:]
        sequences = examples[idx].to(device)  # (B, 74): key : value <eot>
        targets = sequences[:, 1:].clone()
        if args.loss_on == "value":
            targets[:, :37] = -1  # no loss on predicting the key and the colon
        for group in optimizer.param_groups:
            group["lr"] = train.get_lr(step, cfg)
        with ctx:
            _, loss_tensor = model(sequences[:, :-1], targets)
        loss_tensor.backward()
        train.optimizer_step(model, optimizer, no_scaling, cfg.train.grad_clip)
        loss = loss_tensor.item()

    adapters = mora.adapter_layers(model)
    deltas = {name: (adapters[name].delta_weight() if name in adapters else model.get_submodule(name).weight - w0)
              for name, w0 in linears.items()}
    spectra = {name: spectrum_stats(delta.detach().cpu(), args.sv_threshold) for name, delta in deltas.items()}
    return {"method": method, "rank": rank if method != "full" else None, "lr": lr, "trainable_params": n_trainable,
            "curve": curve, "wall_time_s": time.time() - t0, "spectra": spectra}


def steps_to(curve: list[dict], level: float) -> int | None:
    return next((point["step"] for point in curve if point["char_acc"] >= level), None)


def name_of(run: dict) -> str:
    return run["method"] if run["rank"] is None else f"{run['method']} r={run['rank']}"


def report(best: list[dict], runs: list[dict]) -> list[str]:
    """The tables, as markdown lines."""
    steps = [point["step"] for point in best[0]["curve"]]
    lines = ["| method | trainable | best lr | " + " | ".join(str(s) for s in steps) + " | 50% at | 90% at |",
             "|---|---|---|" + "---|" * len(steps) + "---|---|"]
    for run in best:
        reached = [steps_to(run["curve"], level) for level in (0.5, 0.9)]
        lines.append(f"| {name_of(run)} | {run['trainable_params']:,} | {run['lr']:g} | "
                     + " | ".join(f"{100 * p['char_acc']:.1f}" for p in run["curve"]) + " | "
                     + " | ".join("not reached" if s is None else str(s) for s in reached) + " |")
    lines += ["", "| method | lr | mean char acc over checkpoints | final char acc | final exact match |",
              "|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {name_of(run)} | {run['lr']:g} | {100 * mean_accuracy(run):.1f} | "
                     f"{100 * run['curve'][-1]['char_acc']:.1f} | {100 * run['curve'][-1]['exact_match']:.1f} |")
    lines += ["", "| method (best lr) | singular values > threshold, mean per layer | effective rank, mean per layer "
                  "| layer size |",
              "|---|---|---|---|"]
    for run in best:
        stats = [s for s in run["spectra"].values() if s is not None]
        if not stats:
            lines.append(f"| {name_of(run)} | diverged | diverged | |")
            continue
        sizes = sorted({len(s["singular_values"]) for s in stats})
        lines.append(f"| {name_of(run)} | {sum(s['above_threshold'] for s in stats) / len(stats):.1f} | "
                     f"{sum(s['effective_rank'] for s in stats) / len(stats):.1f} | min(in, out) = {sizes} |")
    return lines


def mean_accuracy(run: dict) -> float:
    return sum(point["char_acc"] for point in run["curve"]) / len(run["curve"])


def plot(best: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in best:
        curve = run["curve"]
        left.plot([p["step"] for p in curve], [100 * p["char_acc"] for p in curve], marker="o",
                  label=f"{name_of(run)} (lr {run['lr']:g})")
        values = [sorted(s["singular_values"], reverse=True) for s in run["spectra"].values() if s is not None]
        if not values:
            continue
        width = min(map(len, values))
        mean_spectrum = [sum(v[i] for v in values) / len(values) for i in range(width)]
        right.semilogy(range(1, width + 1), mean_spectrum, label=name_of(run))
    left.set(xlabel="fine-tuning step", ylabel="character accuracy (%)", title="UUID memorization", ylim=(0, 101))
    right.set(xlabel="index", ylabel="singular value of the weight update (mean over layers)", title="spectrum of dW")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sizes for a laptop CPU or one GPU")
    parser.add_argument("--base", help="full checkpoint from train.py to fine-tune; default: pretrain the preset's")
    parser.add_argument("--methods", default="full,lora,mora", help="comma-separated: full, lora, mora")
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks (MoRA gets the same budgets)")
    parser.add_argument("--compress", default="auto", choices=("auto",) + mora.COMPRESSIONS, help="MoRA compression")
    parser.add_argument("--lrs", help="comma-separated learning-rate grid, the same for every method")
    parser.add_argument("--pairs", type=train.positive(train.integer), help="number of UUID pairs to memorize")
    parser.add_argument("--steps", type=train.positive(train.integer), help="fine-tuning steps")
    parser.add_argument("--batch_size", type=train.positive(train.integer), help="pairs per step")
    parser.add_argument("--eval_every", type=train.positive(train.integer), help="steps between accuracy checkpoints")
    parser.add_argument("--loss_on", default="all", choices=("all", "value"), help="tokens in the loss (paper: all)")
    parser.add_argument("--sv_threshold", type=float, default=0.1, help="singular values counted above this (§6.1)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--seed", type=train.integer, default=0, help="seed of the pairs and of the fine-tuning")
    parser.add_argument("--tag", help="results folder under out/uuid/; default: the preset's name")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for key in ("pairs", "steps", "batch_size", "eval_every", "lrs"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    methods = args.methods.split(",")
    if not set(methods) <= {"full", "lora", "mora"}:
        parser.error(f"--methods takes full, lora and mora, got {args.methods}")
    lrs = [float(lr) for lr in args.lrs.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    out_dir = os.path.join("out", "uuid", args.tag or args.preset)
    os.makedirs(out_dir, exist_ok=True)

    device, ctx, _ = train.setup_device(args.device)
    base_path = args.base or build_base(args.preset, preset["base"])
    base = train.load_checkpoint(base_path)
    if base["config"]["adapter"]["method"] != "full" or base["config"]["data"]["tokenizer"] != "bytes":
        raise train.UserError(f"--base {base_path} must be a --method full checkpoint with --tokenizer bytes")
    if base["config"]["model"]["block_size"] < 73:
        raise train.UserError(f"--base {base_path} has block_size {base['config']['model']['block_size']}; "
                              f"a key:value example needs 73")
    enc = data.get_tokenizer("bytes")
    pairs = make_pairs(args.pairs, args.seed)
    examples = torch.tensor([enc.encode_ordinary(f"{k}:{v}") + [enc.eot_token] for k, v in pairs])  # (N, 74)
    prompts = examples[:, :37].to(device)  # "key:"
    values = [v for _, v in pairs]

    plan = [(m, r) for m in methods for r in ([0] if m == "full" else ranks)]
    runs, n_runs = [], len(plan) * len(lrs)
    print(f"{args.pairs} UUID pairs, {args.steps} steps of {args.batch_size}, lrs {lrs}, base {base_path}")
    for method, rank in plan:
        for lr in lrs:
            label = f"[{len(runs) + 1}/{n_runs}] {method}{f' r={rank}' if rank else ''} lr={lr:g}"
            runs.append(finetune(base, method, rank or 8, lr, args, examples, prompts, values, enc, device, ctx, label))
            print(f"{label}: {runs[-1]['trainable_params']:,} trainable parameters")
    for rank in ranks:
        counts = {r["method"]: r["trainable_params"] for r in runs if r["rank"] == rank}
        if {"lora", "mora"} <= counts.keys() and abs(counts["mora"] / counts["lora"] - 1) > 0.01:
            print(f"note: at r={rank} MoRA trains {counts['mora']:,} and LoRA {counts['lora']:,} parameters "
                  f"(over 1% apart)")

    best = [max((r for r in runs if (r["method"], r["rank"] or 0) == (m, rk)), key=mean_accuracy) for m, rk in plan]
    lines = report(best, runs)
    print("\n" + "\n".join(lines))
    results = {"args": vars(args), "base": base_path, "base_config": base["config"], "runs": runs,
               "best": [{"method": r["method"], "rank": r["rank"], "lr": r["lr"]} for r in best], "tables": lines}
    with open(os.path.join(out_dir, "results.json.tmp"), "w") as f:
        json.dump(results, f)
    os.replace(os.path.join(out_dir, "results.json.tmp"), os.path.join(out_dir, "results.json"))
    figure = os.path.join(out_dir, "memorize_uuid.png")
    print(f"\nresults: {out_dir}/results.json" + (f", figure: {figure}" if plot(best, figure) else
                                                   " (pip install matplotlib for the figure)"))
    return results


if __name__ == "__main__":
    try:
        main()
    except (train.UserError, data.DataError) as e:
        raise SystemExit(f"memorize_uuid.py: error: {e}")
