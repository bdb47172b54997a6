"""
The paper's memorization experiment (§3, §5.1, Table 2): fine-tune a pretrained GPT on random UUID pairs
"key:value" and measure how fast each method memorizes them, at equal trainable parameters.

    python memorize_uuid.py                              # CPU demo, one seed: LoRA r=8 vs MoRA r=8, ~8 minutes
    python memorize_uuid.py --methods full,lora,mora --seed 2
    python memorize_uuid.py --base out/full/ckpt.pt      # your own train.py checkpoint (--method full)
    python memorize_uuid.py --base gpt2 --pairs 1000 --batch_size 64 --steps 1500 --lrs full=6e-4,lora=2e-4,mora=4e-3

Without --base, train.py pretrains a small GPT on the bundled corpus (once, cached under out/uuid/). Accuracy: greedy
decoding of the value after "key:", character by character. One seed is a demo: the evidence over seeds (tuned on
held-out seeds, paired intervals, figures) is python -m experiments.memorize, which runs this file's finetune().
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
import uuid

import torch

import mora
import train
from model import GPT, setup_device

TARGETS = "query,key,value,output,up,down"
CPU_BASE = ["--n_layer", "2", "--n_head", "4", "--n_embd", "144", "--block_size", "80", "--max_iters", "600",
            "--batch_size", "32"]  # train.py flags of the default base: at d=144, MoRA's budgets match LoRA r=8's
RATES = "full=3e-3,lora=1e-3,mora=2e-2"  # tuned at r=8 on that base: LoRA (alpha 128r) and MoRA on seeds 0, 4; full, 0


# --- Data and metrics

def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """n (key, value) pairs of random version-4 UUIDs, the same for the same seed."""
    rng = random.Random(seed)
    return [(str(uuid.UUID(int=rng.getrandbits(128), version=4)), str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            for _ in range(n)]


def encode(pairs: list[tuple[str, str]], enc) -> dict:
    """Token ids of "key:" + value + <eot>, right-padded into one (N, L) tensor, and the next-token targets (N, L-1):
    every token's, as in the authors' script, -1 (no loss) on the padding. Prompts keep their lengths (BPE varies)."""
    prompts = [enc.encode_ordinary(f"{key}:") for key, _ in pairs]
    answers = [enc.encode_ordinary(value) + [enc.eot_token] for _, value in pairs]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers))
    sequences = torch.full((len(pairs), length), enc.eot_token)
    targets = torch.full((len(pairs), length - 1), -1)
    for i, ids in enumerate(torch.tensor(prompt + answer) for prompt, answer in zip(prompts, answers)):
        sequences[i, :len(ids)] = ids
        targets[i, :len(ids) - 1] = ids[1:]  # target t is token t + 1
    return {"sequences": sequences, "targets": targets, "prompts": prompts, "values": [v for _, v in pairs],
            "max_answer": max(map(len, answers)), "enc": enc}


def char_accuracy(predicted: list[str], expected: list[str]) -> tuple[float, float]:
    """(fraction of value characters generated right, position by position; fraction of values exactly right)."""
    right = sum(sum(p == e for p, e in zip(pred, exp)) for pred, exp in zip(predicted, expected))
    total = sum(len(exp) for exp in expected)
    return right / total, sum(pred == exp for pred, exp in zip(predicted, expected)) / len(expected)


def format_floor(values: list[str]) -> float:
    """Character accuracy of the best single answer, the same for every key (at each position the most common
    character): knowing the format (dashes, the version digit), no fact. It assumes values of one shape, as UUIDs."""
    best = "".join(statistics.mode(column) for column in zip(*values))
    return char_accuracy([best] * len(values), values)[0]


def sustained_step(curve: list[dict], level: float) -> int | None:
    """The first checkpoint from which the accuracy stays at or above `level` to the end; None if it ends below."""
    last_below = max((i for i, point in enumerate(curve) if point["char_acc"] < level), default=-1)
    return curve[last_below + 1]["step"] if last_below + 1 < len(curve) else None


def spectrum_stats(delta: torch.Tensor, threshold: float = 0.1) -> dict | None:
    """Singular values of a weight update: how many exceed `threshold` (the paper's §6.1 count) and the effective
    rank exp(entropy of the normalized singular values) (Roy & Vetterli 2007). None if the run diverged."""
    if not torch.isfinite(delta).all():
        return None
    s = torch.linalg.svdvals(delta.double())
    p = s / s.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"above_threshold": int((s > threshold).sum()), "effective_rank": math.exp(entropy)}


# --- Base model, fine-tuning, evaluation

def load_base(source: str | None, pretrain: list[str] | None = None, name: str = "base-cpu") -> dict:
    """The base model's config, weights and tokenizer. Without a source, train.py pretrains one with the flags
    `pretrain` (CPU_BASE, as it is when called), once: cached under a key of those flags and of the training code."""
    if source is None:
        pretrain = CPU_BASE if pretrain is None else pretrain
        code = b"".join(open(module.__file__, "rb").read() for module in (train, mora, sys.modules[GPT.__module__]))
        key = hashlib.sha256(json.dumps(pretrain).encode() + code).hexdigest()[:8]  # a changed base is a new one
        out_dir = os.path.join("out", "uuid", f"{name}-{key}")
        source, metrics = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "metrics.jsonl")
        if not (os.path.exists(metrics) and any(json.loads(line)["kind"] == "summary" for line in open(metrics))):
            print(f"pretraining the base model into {out_dir} (once; later runs reuse it)")
            train.main(pretrain + ["--method", "full", "--out_dir", out_dir])
    model, tokenizer = train.load_pretrained(source, dropout=0.0, flag="--base")
    return {"source": source, "config": model.config, "state": model.state_dict(), "tokenizer": tokenizer,
            "params": model.num_params()}


def check_fits(base: dict, examples: dict) -> None:  # the model reads a sequence's first L - 1 tokens
    if examples["sequences"].shape[1] - 1 > base["config"].block_size:
        raise train.UserError(f"--base {base['source']} has block_size {base['config'].block_size}; a key:value "
                              f"example needs {examples['sequences'].shape[1] - 1}")


@torch.no_grad()
def evaluate(model: GPT, examples: dict, ctx, batch: int = 512) -> tuple[float, float]:
    """Greedy-decode the value after every "key:" prompt (prompts of one length at a time) and score it."""
    model.eval()
    enc = examples["enc"]
    device = next(model.parameters()).device
    predicted = [""] * len(examples["prompts"])
    for length in sorted(set(map(len, examples["prompts"]))):  # generate() takes prompts of one length
        rows = [i for i, prompt in enumerate(examples["prompts"]) if len(prompt) == length]
        for chunk in (rows[start:start + batch] for start in range(0, len(rows), batch)):
            prompts = torch.tensor([examples["prompts"][i] for i in chunk], device=device)
            with ctx:
                out = model.generate(prompts, max_new_tokens=examples["max_answer"], temperature=0)
            for i, tokens in zip(chunk, out[:, length:].tolist()):
                tokens = tokens[:tokens.index(enc.eot_token)] if enc.eot_token in tokens else tokens
                predicted[i] = enc.decode(tokens)
    model.train()
    return char_accuracy(predicted, examples["values"])


def start(base: dict, method: str, rank: int, lr: float, seed: int, args, device) -> tuple[GPT, argparse.Namespace]:
    """A run's model as train.py builds it (seeded first) and its train.py config: schedule, clipping, its own knobs."""
    flags = ["--method", method, "--lr", str(lr), "--max_iters", str(args.steps), "--warmup", str(args.steps // 20),
             "--min_lr_ratio", str(args.min_lr_ratio), "--seed", str(seed)]
    own = {"full": [], "lora": ["--alpha", str(args.alpha_r * rank)], "mora": ["--compress", args.compress]}[method]
    cfg = train.parse_args(flags + own + ([] if method == "full" else ["--rank", str(rank), "--targets", TARGETS]))
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(base["config"]))
    model.load_state_dict(base["state"])
    return train.adapt(model, cfg, pretraining=False).to(device), cfg


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """(steps, batch_size): the rows of each step's batch, epoch after epoch of a random order (a generator of its own;
    a batch may span two epochs)."""
    order = torch.Generator().manual_seed(seed)
    rows = torch.cat([torch.randperm(n, generator=order) for _ in range(-(-steps * batch_size // n))])
    return rows[:steps * batch_size].view(steps, batch_size)


def record(model: GPT, base: dict, examples: dict, cfg, curve: list[dict], t0: float) -> dict:
    """A finished run: its curve and its update's singular values per adapted layer (full: the weight's change)."""
    spectra = {name: spectrum_stats((layer.delta_weight() if isinstance(layer, mora.AdapterLinear) else layer.weight -
                                     base["state"][f"{name}.weight"].to(layer.weight.device)).detach())  # on the device
               for name, layer in model.named_modules() if name.rsplit(".", 1)[-1] in TARGETS.split(",")}
    return {"method": cfg.method, "rank": None if cfg.method == "full" else cfg.rank, "lr": cfg.lr, "alpha": cfg.alpha,
            "seed": cfg.seed, "trainable_params": mora.count_trainable(model), "curve": curve, "spectra": spectra,
            "wall_time_s": time.time() - t0, "format_floor": format_floor(examples["values"]),
            "tokens_per_example": examples["sequences"].shape[1]}


def finetune(base: dict, examples: dict, method: str, rank: int, lr: float, seed: int, args, device, ctx,
             label: str) -> dict:
    """One fine-tuning run on `examples` (args: the experiment's flags); returns its accuracy curve and spectra."""
    check_fits(base, examples)
    model, cfg = start(base, method, rank, lr, seed, args, device)
    optimizer = model.configure_optimizers(0.0, lr, (0.9, 0.99), device.type)  # no weight decay: facts must stay
    trained = torch.compile(model) if args.compile else model  # the training step only: decoding stays eager
    rows = batch_order(len(examples["values"]), args.batch_size, args.steps, seed).to(device)  # copied once
    sequences, targets = examples["sequences"].to(device), examples["targets"].to(device)  # copied once, not per step
    curve, t0, loss = [], time.time(), None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            char_acc, exact = evaluate(model, examples, ctx)
            loss = None if loss is None else float(loss)  # the only place that waits for the device
            curve.append({"step": step, "char_acc": char_acc, "exact_match": exact, "loss": loss})
            eta = (time.time() - t0) / max(step, 1) * (args.steps - step)
            print(f"{label}: step {step}/{args.steps}, loss {'-' if loss is None else f'{loss:.3f}'}, "
                  f"char acc {100 * char_acc:.1f}%, exact {100 * exact:.1f}%, eta {eta / 60:.1f} min", flush=True)
        if step == args.steps:
            break
        batch = [(sequences[rows[step], :-1], targets[rows[step]])]
        loss = train.train_step(trained, optimizer, batch, ctx, train.get_lr(step, cfg), cfg.grad_clip)  # no sync
    return record(model, base, examples, cfg, curve, t0)


# --- The demo: one seed, one rate per method

def add_flags(parser: argparse.ArgumentParser) -> None:
    """The experiment's flags, shared with the multi-seed harness (experiments/memorize.py)."""
    count, number = train.numeric(int, positive=True), train.numeric(float, positive=True)
    parser.add_argument("--base", help="a train.py full checkpoint, GPT-2 name or HF folder; default: one trained here")
    parser.add_argument("--methods", default="lora,mora", help="comma-separated: full, lora, mora")
    parser.add_argument("--compress", default="auto", help="MoRA compression (as train.py's --compress)")
    parser.add_argument("--pairs", type=count, default=64, help="number of UUID pairs to memorize")
    parser.add_argument("--steps", type=count, default=1200, help="fine-tuning steps")
    parser.add_argument("--min_lr_ratio", type=float, default=0.1, help="the cosine ends at lr * this (1: constant)")
    parser.add_argument("--alpha_r", type=number, default=128, help="LoRA's alpha / r, its scaling (128: as RATES)")
    parser.add_argument("--batch_size", type=count, default=32, help="pairs per step")
    parser.add_argument("--eval_every", type=count, default=100, help="steps between accuracy checkpoints")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 if it can")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the training step")


def report(runs: list[dict], floor: float) -> list[str]:
    """One line per run: where it ended, from which step it stays >= 90% (its speed), its update's rank (§6.1)."""
    lines = [f"format floor {100 * floor:.1f}% of the characters, exact-match floor 0%"]
    for run in runs:
        spectra = [s for s in run["spectra"].values() if s is not None]
        rank = "diverged" if not spectra else "{:.1f} singular values above threshold, effective rank {:.1f}".format(
            *(statistics.fmean(s[k] for s in spectra) for k in ("above_threshold", "effective_rank")))
        name = run["method"] if run["rank"] is None else f"{run['method']} r={run['rank']}"
        end, reached = run["curve"][-1], sustained_step(run["curve"], 0.9)
        lines.append(f"{name} ({run['trainable_params']:,} trainable, lr {run['lr']:g}): at step {end['step']} "
                     f"{100 * end['char_acc']:.1f}% of the characters, {100 * end['exact_match']:.1f}% of the values "
                     f"exactly; >= 90% from step {'-' if reached is None else reached}; dW per layer: {rank}")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    add_flags(parser)
    parser.add_argument("--rank", type=train.numeric(int, positive=True), default=8, help="LoRA rank; MoRA: its budget")
    parser.add_argument("--lrs", default=RATES, help="a rate per method (default: RATES, picked as docs/ describes)")
    parser.add_argument("--seed", type=train.numeric(int), default=1, help="draws the pairs, adapters and batch order")
    args = parser.parse_args(argv)
    try:
        rates = {method: float(lr) for method, lr in (item.split("=") for item in args.lrs.split(","))}
    except ValueError:
        parser.error(f"--lrs {args.lrs}: write a rate per method, as full=3e-3,lora=1e-3,mora=2e-2")
    methods = args.methods.split(",")
    if not set(methods) <= {"full", "lora", "mora"} or not set(methods) <= set(rates):
        parser.error(f"--methods {args.methods} must be among full, lora, mora, each with a rate in --lrs {args.lrs}")
    for flag, method in (("compress", "mora"), ("alpha_r", "lora")):
        if getattr(args, flag) != parser.get_default(flag) and method not in methods:
            parser.error(f"--{flag} does nothing without {method} in --methods {args.methods}")
    device, ctx, _ = setup_device(args.device, args.dtype)
    base = load_base(args.base)
    examples = encode(make_pairs(args.pairs, args.seed), train.get_tokenizer(base["tokenizer"]))
    runs = [finetune(base, examples, m, args.rank, rates[m], args.seed, args, device, ctx, m) for m in methods]
    print("\n".join(["", f"{args.pairs} key:value pairs (values like {examples['values'][0]}), seed {args.seed} (one "
                          f"seed: a demo)"] + report(runs, format_floor(examples["values"]))))
    return runs


if __name__ == "__main__":
    try:
        main()
    except train.UserError as e:
        print(f"memorize_uuid.py: error: {e}", file=sys.stderr)
        sys.exit(2)
