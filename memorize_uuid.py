"""
The paper's memorization experiment (§3, §5.1, Table 2): fine-tune a pretrained GPT on random UUID pairs
"key:value" and measure how fast each method memorizes them, at equal trainable parameters.

    python memorize_uuid.py                              # CPU demo, one seed: LoRA r=8 vs MoRA r=8, ~8 minutes
    python memorize_uuid.py --methods full,lora,mora --seed 2
    python memorize_uuid.py --base out/full/ckpt.pt      # your own train.py checkpoint (--method full)
    python memorize_uuid.py --base gpt2 --pairs 1000 --batch_size 64 --steps 1500 --lrs full=3e-4,lora=1e-3,mora=3e-3

Without --base, a small GPT is pretrained first with train.py on the bundled corpus (once, cached under
out/uuid/base-cpu/); --base also takes a GPT-2 name (downloads once) or HuggingFace folder. Accuracy is greedy
decoding of the value after "key:", compared character by character with the true value. One seed is a demo: the
multi-seed evidence (rates tuned on a held-out seed, 3 reported seeds, paired intervals, figures) is
python -m experiments.memorize, which runs this file's finetune() (commands in docs/experiments.md).
"""

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import time
import uuid

import torch

import mora
import train
from model import GPT, setup_device

TARGETS = "query,key,value,output,up,down"
CPU_BASE = ["--n_layer", "2", "--n_head", "4", "--n_embd", "144", "--block_size", "80", "--max_iters", "600",
            "--batch_size", "32"]  # train.py flags of the default base: at d=144, MoRA's budgets match LoRA r=8's


# --- Data and metrics

def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n (key, value) pairs of random version-4 UUIDs, the same for the same seed."""
    rng = random.Random(seed)
    return [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            for _ in range(n)]


def encode(pairs: list[tuple[str, str]], enc, loss_on: str) -> dict:
    """Token ids of "key:" + value + <eot>, right-padded into one (N, L) tensor, and the next-token targets (N, L-1),
    -1 (no loss) on the padding and, for loss_on="value", before the value. Prompts keep their lengths (BPE varies)."""
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


# --- Base model, fine-tuning, evaluation

def load_base(source: str | None, pretrain: list[str] = CPU_BASE, name: str = "base-cpu") -> dict:
    """The base model's config, weights and tokenizer; without a source, train.py pretrains one, once, into name."""
    if source is None:
        out_dir = os.path.join("out", "uuid", name)
        source, metrics = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "metrics.jsonl")
        if not (os.path.exists(metrics) and any(json.loads(line)["kind"] == "summary" for line in open(metrics))):
            print(f"pretraining the base model into {out_dir} (once; later runs reuse it)")
            train.main(pretrain + ["--method", "full", "--out_dir", out_dir])
    model, tokenizer = train.load_pretrained(source, dropout=0.0, flag="--base")
    return {"source": source, "config": model.config, "state": model.state_dict(), "tokenizer": tokenizer,
            "params": model.num_params()}


def check_fits(base: dict, examples: dict) -> None:
    if examples["sequences"].shape[1] > base["config"].block_size:
        raise train.UserError(f"--base {base['source']} has block_size {base['config'].block_size}; a key:value "
                              f"example needs {examples['sequences'].shape[1]}")


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


def finetune(base: dict, examples: dict, method: str, rank: int, lr: float, seed: int, args, device, ctx,
             label: str) -> dict:
    """One fine-tuning run on `examples` (args: the experiment's flags); returns its accuracy curve and spectra."""
    check_fits(base, examples)
    enc = train.get_tokenizer(base["tokenizer"])
    cfg = train.parse_args(["--method", method, "--rank", str(rank), "--compress", args.compress, "--targets", TARGETS,
                            "--lr", str(lr), "--max_iters", str(args.steps), "--warmup", str(args.steps // 20),
                            "--min_lr_ratio", str(args.min_lr_ratio), "--seed", str(seed)]  # warmup, then cosine
                           + (["--alpha", str(args.alpha)] if args.alpha else []))
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(base["config"]))
    model.load_state_dict(base["state"])
    model = train.adapt(model, cfg, pretraining=False).to(device)
    before = {name: m.weight.detach().clone() for name, m in model.named_modules()  # full fine-tuning's W0
              if name.rsplit(".", 1)[-1] in TARGETS.split(",") and not isinstance(m, mora.AdapterLinear)}
    optimizer = model.configure_optimizers(0.0, lr, (0.9, 0.99), device.type)  # no weight decay: facts must stay
    trained = torch.compile(model) if args.compile else model  # the training step only: decoding stays eager
    order = torch.Generator().manual_seed(seed)
    batches = torch.randperm(len(examples["values"]), generator=order).to(device)  # one copy per epoch, not per step
    sequences, targets = examples["sequences"].to(device), examples["targets"].to(device)  # copied once, not per step
    curve, t0, loss = [], time.time(), None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            char_acc, exact = evaluate(model, examples, enc, ctx)
            loss = None if loss is None else float(loss)  # the only place that waits for the device
            curve.append({"step": step, "char_acc": char_acc, "exact_match": exact, "loss": loss})
            eta = (time.time() - t0) / max(step, 1) * (args.steps - step)
            print(f"{label}: step {step}/{args.steps}, loss {'-' if loss is None else f'{loss:.3f}'}, "
                  f"char acc {100 * char_acc:.1f}%, exact {100 * exact:.1f}%, eta {eta / 60:.1f} min", flush=True)
        if step == args.steps:
            break
        if len(batches) < args.batch_size:  # a new epoch, in a new order
            batches = torch.cat((batches, torch.randperm(len(examples["values"]), generator=order).to(device)))
        idx, batches = batches[:args.batch_size], batches[args.batch_size:]
        batch = [(sequences[idx, :-1], targets[idx])]
        loss = train.train_step(trained, optimizer, batch, ctx, train.get_lr(step, cfg), cfg.grad_clip)  # no sync

    deltas = {name: layer.delta_weight() for name, layer in mora.adapter_layers(model).items()}
    deltas.update({name: model.get_submodule(name).weight - w0 for name, w0 in before.items()})
    return {"method": method, "rank": rank if method != "full" else None, "lr": lr, "alpha": cfg.alpha, "seed": seed,
            "trainable_params": mora.count_trainable(model), "curve": curve, "wall_time_s": time.time() - t0,
            "format_floor": format_floor(examples["values"]), "tokens_per_example": examples["sequences"].shape[1],
            "spectra": {name: spectrum_stats(d.detach(), args.sv_threshold)  # on the device: no copy to the CPU
                        for name, d in deltas.items()}}


# --- The demo: one seed, one rate per method

def add_flags(parser: argparse.ArgumentParser) -> None:
    """The experiment's flags, shared with the multi-seed harness (experiments/memorize.py)."""
    count, number = train.numeric(int, positive=True), train.numeric(float, positive=True)
    parser.add_argument("--base", help="train.py full checkpoint, GPT-2 name or HuggingFace folder; default: a small "
                                       "GPT pretrained once by train.py")
    parser.add_argument("--methods", default="lora,mora", help="comma-separated: full, lora, mora")
    parser.add_argument("--compress", default="auto", help="MoRA compression (as train.py's --compress)")
    parser.add_argument("--pairs", type=count, default=64, help="number of UUID pairs to memorize")
    parser.add_argument("--steps", type=count, default=1200, help="fine-tuning steps")
    parser.add_argument("--min_lr_ratio", type=float, default=0.1, help="the cosine ends at lr * this (1: constant)")
    parser.add_argument("--alpha", type=number, help="LoRA's alpha (scaling alpha / r); default 2r")
    parser.add_argument("--batch_size", type=count, default=32, help="pairs per step")
    parser.add_argument("--eval_every", type=count, default=100, help="steps between accuracy checkpoints")
    parser.add_argument("--loss_on", default="all", choices=("all", "value"), help="tokens in the loss (paper: all)")
    parser.add_argument("--sv_threshold", type=float, default=0.1, help="singular values counted above this (§6.1)")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: bfloat16 autocast on GPUs that support it")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training step")


def report(runs: list[dict], floor: float) -> list[str]:
    """One row per run: accuracy at four checkpoints, the step from which it stays >= 90%, the updates' rank."""
    steps = [point["step"] for point in runs[0]["curve"]]
    shown = sorted({steps[len(steps) // 4], steps[len(steps) // 2], steps[3 * len(steps) // 4], steps[-1]})
    lines = [f"Character accuracy (%); format floor {100 * floor:.1f}%, exact-match floor 0%:", "",
             "| method | trainable | lr | " + " | ".join(f"step {s}" for s in shown) + " | final exact match | stays "
             ">= 90% from step | singular values > threshold, mean per layer | effective rank |",
             "|---" * (len(shown) + 7) + "|"]
    for run in runs:
        accuracy = {point["step"]: point for point in run["curve"]}
        spectra = [s for s in run["spectra"].values() if s is not None]
        rank = (f"{statistics.fmean(s['above_threshold'] for s in spectra):.1f} | "
                f"{statistics.fmean(s['effective_rank'] for s in spectra):.1f}") if spectra else "diverged | diverged"
        name = run["method"] if run["rank"] is None else f"{run['method']} r={run['rank']}"
        reached = sustained_step(run["curve"], 0.9)
        lines.append(f"| {name} | {run['trainable_params']:,} | {run['lr']:g} | "
                     + " | ".join(f"{100 * accuracy[s]['char_acc']:.1f}" for s in shown)
                     + f" | {100 * run['curve'][-1]['exact_match']:.1f} | "
                     + f"{'not reached' if reached is None else reached} | {rank} |")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    add_flags(parser)
    parser.add_argument("--rank", type=train.numeric(int, positive=True), default=8, help="LoRA rank; MoRA: its budget")
    parser.add_argument("--lrs", default="full=3e-3,lora=1e-2,mora=3e-2", help="a rate per method (tuned: see docs/)")
    parser.add_argument("--seed", type=train.numeric(int), default=1, help="draws the pairs, adapters and batch order")
    args = parser.parse_args(argv)
    rates = dict(item.split("=") for item in args.lrs.split(","))
    methods = args.methods.split(",")
    if not set(methods) <= {"full", "lora", "mora"} or not set(methods) <= set(rates):
        parser.error(f"--methods {args.methods} must be among full, lora, mora, each with a rate in --lrs {args.lrs}")
    device, ctx, _ = setup_device(args.device, args.dtype)
    base = load_base(args.base)
    examples = encode(make_pairs(args.pairs, args.seed), train.get_tokenizer(base["tokenizer"]), args.loss_on)
    check_fits(base, examples)
    runs = [finetune(base, examples, m, args.rank, float(rates[m]), args.seed, args, device, ctx, m) for m in methods]
    print("\n".join(["", f"{args.pairs} UUID pairs, seed {args.seed} (one seed: a demo)"] +
                    report(runs, format_floor(examples["values"]))))
    return runs


if __name__ == "__main__":
    try:
        main()
    except train.UserError as e:
        raise SystemExit(f"memorize_uuid.py: error: {e}")
