"""
UUID memorization over seeds (memorize_uuid.py's experiment, the paper's §5.1): each (method, rank) picks its
learning rate (LoRA: rate and alpha) on the --tune_seeds, which are never reported; the --seeds runs then use it.

    python -m experiments.memorize --methods lora,mora --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --tune_only        # 31 min
    python -m experiments.memorize --methods full --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --tune_only             # 16 min
    python -m experiments.memorize --methods full,lora,mora --lrs 1e-3,3e-3,1e-2,3e-2,1e-1 --seeds 1,2,3 --tag seeds
    python -m experiments.memorize --methods lora,mora --ranks 16 \\
        --lrs lora=1e-3:3e-3:1e-2:3e-2,mora=3e-3:1e-2:3e-2:1e-1      # a rank of the sweep below (r = 4, 16, 32)
    python -m experiments.memorize --methods lora,mora --ranks 4,8,16,32 --tag ranks \\
        --lrs lora=1e-3:3e-3:1e-2:3e-2,mora=3e-3:1e-2:3e-2:1e-1      # the rank sweep, from the cached runs
    python -m experiments.memorize --preset gpu      # one GPU: GPT-2 (124M) from HuggingFace, 1,000 pairs
    python -m experiments.memorize --preset gpu-offline   # one GPU, no download: a base pretrained here (a check)
    python -m experiments.memorize --methods lora --alphas 16 --tune_seeds 0,4 --tune_only \
        --lrs 1e-3,2e-3,5e-3,1e-2,2e-2,5e-2        # LoRA at its best: one alpha of the rate x alpha grid (34-38 min)
    python -m experiments.memorize --methods lora,mora --alphas 1,2,4,8,16 --tune_seeds 0,4 --seeds 1,2,3 \
        --lrs lora=1e-3:2e-3:5e-3:1e-2:2e-2:5e-2,mora=5e-3:1e-2:2e-2:5e-2:1e-1 --tag best16   # both reported: docs/

Protocol: the tuning score is the mean character accuracy over the checkpoints, averaged over the tuning seeds. The
tuning line notes every pick that is not an interior optimum (harness.pick): at an edge of its grid, LoRA's alpha not
tuned, flat (a neighbouring rate within the tuning seeds' spread, or within 2 points on one seed), or at the format
floor (no combination above it: noise). Each seed draws its own pairs,
adapter initialization and batch order. Every run is saved under out/uuid/runs/ under a key of everything that
determines it (the pairs themselves, the base model's weights, the tokenizer, method, rank, rate, seed and
flags), so an interrupted sweep continues and a changed experiment is never answered from the cache. Results:
tables on stdout, out/uuid/<tag>/results.json and, with matplotlib, out/uuid/<tag>/memorize_uuid.png.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import statistics

import torch

import memorize_uuid
import train
from model import GPT, setup_device
from experiments.bench import dispatched
from experiments.harness import (code_digest, interval_text, paired_difference, parse_grid, pick, pyplot, run_main,
                                 save_figure, spread, spread_text, write_json)

def scaled_rates(width: int, factors: tuple[float, ...] = (1,)) -> str:
    """--lrs for a base of another width, by a rule, not a tuning: memorize_uuid.RATES (picked on the d=144 base)
    times 144 / width (Adam moves each weight by about the rate, and a wider layer sums more of them), times each
    factor (a grid around that guess). LoRA keeps alpha = 128r, the multiple picked with its rate."""
    rates = dict(item.split("=") for item in memorize_uuid.RATES.split(","))
    grid = lambda lr: ":".join(f"{float(lr) * factor * 144 / width:.1e}" for factor in factors)
    return ",".join(f"{method}={grid(lr)}" for method, lr in rates.items())


PRESETS = {  # flags override any of it
    "cpu": {"base": None, "methods": "lora,mora", "seeds": "1", "lrs": memorize_uuid.RATES, "alphas": "128"},
    # 1,000 pairs x 122 random bits over GPT-2's 1.33M LoRA r=8 weights: 0.09 bits per parameter (paper: 0.06 at
    # LLaMA-2-7B; CPU preset: 0.19), 96 epochs (paper: about 100). Rates: a grid around the scaled CPU picks.
    "gpu": {"base": "gpt2", "methods": "full,lora,mora", "pairs": 1000, "steps": 1500, "batch_size": 64,
            "eval_every": 150, "seeds": "1,2,3", "lrs": scaled_rates(768, (0.25, 0.5, 1, 2, 4)), "alphas": "128"},
    # The GPU path without a download (a check, one seed): a base that train.py pretrains on the bundled corpus, wide
    # enough (512) that every adapted layer takes the operator route; 1,000 pairs over LoRA r=8's 0.44M weights (0.28
    # bits per parameter), bf16 autocast, a compiled training step. Rates: the scaled CPU picks.
    "gpu-offline": {"base": None, "methods": "full,lora,mora", "pairs": 1000, "steps": 1500, "batch_size": 64,
                    "eval_every": 150, "seeds": "1", "lrs": scaled_rates(512), "alphas": "128", "compile": True},
}
BASES = {  # train.py flags of the base that a preset without --base pretrains (once, cached under out/uuid/); the
    # CPU preset's is memorize_uuid.CPU_BASE, read when the base is loaded (a fork may change it)
    "gpu-offline": ["--n_layer", "6", "--n_head", "8", "--n_embd", "512", "--block_size", "80", "--max_iters", "2000",
                    "--batch_size", "64", "--lr", "3e-3"],
}
ONE_SEED_FLAT = 0.02  # with one tuning seed, a neighbouring rate within 2 points of mean accuracy makes a pick "flat"
LAUNCH_S = 5e-6  # a kernel launch, the floor of every operation at these small sizes: the other term of the estimate
H100_FLOPS = 989e12 * 0.4  # bf16 dense peak of an H100 SXM, at 40% utilization: the assumption of the estimate


def load_base(source: str | None, preset: str, flags: list[str] | None = None) -> dict:
    """memorize_uuid.load_base (without a source, the preset's own base: BASES[preset], or flags, or CPU_BASE), with
    the digest of its weights: part of every run's cache key, so a changed base is never answered from the cache."""
    base = memorize_uuid.load_base(source, flags or BASES.get(preset), f"base-{preset}")
    base["digest"] = hashlib.sha256(b"".join(t.contiguous().view(torch.uint8).numpy().tobytes()
                                             for t in base["state"].values())).hexdigest()  # the weights themselves
    return base


def run_key(base: dict, method: str, rank: int, lr: float, seed: int, args, device, engine: str = "finetune"):
    """(the file a run's result is cached in, the settings that key it, its examples): every thing that determines the
    run, so that a cache can travel between machines (device, resolved dtype) and engines (memorize_uuid.finetune, or
    experiments.many's batched one, equal to float rounding: a run is reused only from its own)."""
    examples = memorize_uuid.encode(memorize_uuid.make_pairs(args.pairs, seed), train.get_tokenizer(base["tokenizer"]))
    memorize_uuid.check_fits(base, examples)  # before the cache: a base too short is an error, not a cached number
    settings = {"base": base["source"], "base_weights": base["digest"], "tokenizer": base["tokenizer"],
                "block_size": base["config"].block_size, "pairs": hashlib.sha256(json.dumps(
                    [examples["values"], examples["prompts"]]).encode()).hexdigest(), "method": method, "rank": rank,
                "lr": lr, "seed": seed, "code": code_digest(args.compress if method == "mora" else "auto", uuid=True),
                "compress": args.compress if method == "mora" else None,  # each method's own knobs only
                "alpha_r": args.alpha_r if method == "lora" else None, "device": torch.device(device).type,
                "dtype": setup_device(str(device), args.dtype)[2], "engine": engine,
                **{k: getattr(args, k) for k in ("steps", "batch_size", "eval_every", "compile", "min_lr_ratio")}}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join("out", "uuid", "runs", f"{method}-r{rank}-lr{lr:g}-seed{seed}-{key}.json"), settings, examples


def cached_result(base: dict, method: str, rank: int, lr: float, seed: int, args, device) -> dict | None:
    """The saved result of this exact run, from either engine (with the engine's name), or None."""
    for engine in ("finetune", "batched"):
        path = run_key(base, method, rank, lr, seed, args, device, engine)[0]
        if os.path.exists(path):
            return {**json.load(open(path))["run"], "engine": engine}
    return None


def cached_run(base: dict, method: str, rank: int, lr: float, seed: int, args, device, ctx, label: str) -> dict:
    """memorize_uuid.finetune(), or its saved result if this exact run finished before (a sweep continues), from
    either engine: experiments.many trains runs ahead, batched or in other processes."""
    found = cached_result(base, method, rank, lr, seed, args, device)
    if found:
        return found
    path, settings, examples = run_key(base, method, rank, lr, seed, args, device)
    run = memorize_uuid.finetune(base, examples, method, rank, lr, seed, args, device, ctx, label)
    write_json(path, {"settings": settings, "run": run})
    return {**run, "engine": "finetune"}


def estimate_flops(base: dict, args, tokens_per_example: int, n_runs: int) -> float:
    """6 N per trained token (forward + backward; an upper bound for adapters, which skip the frozen weights'
    gradients) and 2 N per token of greedy generation at each checkpoint; attention's extra terms are left out."""
    train_tokens = args.steps * args.batch_size * tokens_per_example
    eval_tokens = (args.steps // args.eval_every + 1) * args.pairs * tokens_per_example
    return n_runs * base["params"] * (6 * train_tokens + 2 * eval_tokens)


def estimate_launches(base: dict, args, examples: dict, n_runs: int, device, ctx) -> int:
    """Kernel launches of the sweep, eager: the operations of one training step (MoRA, the most) and of one decoding
    forward, counted here on a throwaway copy of the base, times the steps and the decoding forwards of every run.
    At these sizes a step is a few milliseconds of arithmetic, so launches, not FLOPs, set the time (--compile fuses
    many: an upper bound)."""
    cfg = train.parse_args(["--method", "mora", "--compress", args.compress, "--targets", memorize_uuid.TARGETS])
    model = train.adapt(GPT(dataclasses.replace(base["config"])), cfg, pretraining=False).to(device)
    optimizer = model.configure_optimizers(0.0, 1e-3, (0.9, 0.99), device.type)
    x = examples["sequences"][:args.batch_size, :-1].to(device)
    step_ops = dispatched(lambda: train.train_step(model, optimizer, [(x, x)], ctx, 1e-3, 1.0))
    with torch.no_grad(), ctx:
        forward_ops = dispatched(lambda: model(x))
    forwards = (args.steps // args.eval_every + 1) * math.ceil(args.pairs / 512) * examples["max_answer"]
    return n_runs * (args.steps * step_ops + forwards * forward_ops)


def mean_accuracy(run: dict) -> float:
    return statistics.fmean(point["char_acc"] for point in run["curve"])


def name_of(method: str, rank: int | None, alpha_r: float | None = None) -> str:
    """'full', 'mora r=8', 'lora r=8 alpha=128r' (LoRA's alpha as a multiple of its r)."""
    return method if method == "full" else f"{method} r={rank}" + (f" alpha={alpha_r:g}r" if alpha_r else "")


def row_name(method: str, rank: int | None, row: dict) -> str:  # a row records LoRA's absolute alpha
    return name_of(method, rank, row["alpha"] / rank if row["alpha"] else None)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summarize(groups: dict, seeds: list[int], steps: list[int]) -> dict:
    """Per (method, rank): accuracy over seeds at each checkpoint, the sustained-90% steps, mean accuracy per seed."""
    summary = {}
    for (method, rank), runs in groups.items():
        summary[method, rank] = {
            "lr": runs[0]["lr"], "alpha": runs[0].get("alpha"), "trainable_params": runs[0]["trainable_params"],
            "char_acc": {s: spread([r["curve"][i]["char_acc"] for r in runs]) for i, s in enumerate(steps)},
            "exact_match": {s: spread([r["curve"][i]["exact_match"] for r in runs]) for i, s in enumerate(steps)},
            "reach_90": [memorize_uuid.sustained_step(r["curve"], 0.9) for r in runs],
            "mean_acc": [mean_accuracy(r) for r in runs], "seeds": seeds}
    return summary


def reach_summary(steps: list[int | None]) -> str:
    """Median (min-max) over seeds of the sustained-crossing step; a seed that never stays above counts as infinite."""
    values = sorted(math.inf if s is None else s for s in steps)
    show = lambda v: "not reached" if v == math.inf else f"{v:g}"
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(values[0])}-{show(values[-1])})"


def report(summary: dict, tuning: list[str], floor: float, steps: list[int]) -> list[str]:
    shown = sorted({steps[len(steps) // 4], steps[len(steps) // 2], steps[3 * len(steps) // 4], steps[-1]})
    n = next(iter(summary.values()))["char_acc"][steps[0]]["n"]
    over = "on one seed (a demo: no spread)" if n == 1 else f"mean ± std (min-max) over {n} seeds"
    lines = [f"Character accuracy (%), {over}; format floor {pct(floor)}%, exact-match floor 0%:", "",
             "| method | trainable | lr | " + " | ".join(f"step {s}" for s in shown)
             + " | final exact match | stays >= 90% from step: median (range) |", "|---" * (len(shown) + 5) + "|"]
    for (method, rank), row in summary.items():
        cells = [spread_text(row["char_acc"][s], pct) for s in shown]
        exact = row["exact_match"][steps[-1]]
        name = row_name(method, rank, row)
        lines.append(f"| {name} | {row['trainable_params']:,} | {row['lr']:g} | " + " | ".join(cells)
                     + f" | {spread_text(exact, pct, with_range=False)} | {reach_summary(row['reach_90'])} |")
    pairs = [(m, r) for m, r in summary if m == "mora" and ("lora", r) in summary]
    if pairs:
        lines += ["", "Paired difference MoRA - LoRA of the mean character accuracy over checkpoints (points), per "
                      "seed:", "", "| rank | mean | 95% interval | min-max | per seed |", "|---|---|---|---|---|"]
        for _, rank in pairs:
            d = paired_difference(summary["mora", rank]["mean_acc"], summary["lora", rank]["mean_acc"])
            lines.append(f"| {rank} | {pct(d['mean'])} | {interval_text(d, pct)} | "
                         f"{pct(d['min'])} to {pct(d['max'])} | {', '.join(pct(x) for x in d['diffs'])} |")
    return lines + ([""] + tuning if tuning else [])


def spectra_lines(runs: list[dict]) -> list[str]:
    lines = ["| method | seed | singular values > threshold, mean per layer | effective rank, mean per layer |",
             "|---|---|---|---|"]
    for run in runs:
        stats = [s for s in run["spectra"].values() if s is not None]
        values = (f"{statistics.fmean(s['above_threshold'] for s in stats):.1f} | "
                  f"{statistics.fmean(s['effective_rank'] for s in stats):.1f}") if stats else "diverged | diverged"
        lines.append(f"| {name_of(run['method'], run['rank'])} | {run['seed']} | {values} |")
    return lines


def plot(summary: dict, floor: float, steps: list[int], n_seeds: int, path: str) -> bool:
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
        name = row_name(method, rank, row)
        line, = curves.plot(steps, mean, marker="o", ms=3, label=f"{name} (lr {row['lr']:g})")
        curves.fill_between(steps, [100 * row["char_acc"][s]["min"] for s in steps],
                            [100 * row["char_acc"][s]["max"] for s in steps], color=line.get_color(), alpha=0.2)
    curves.axhline(100 * floor, color="gray", ls="--", label="format floor")
    over = f"mean and min-max over {n_seeds} seeds" if n_seeds > 1 else "one seed: a demo"
    curves.set(xlabel="fine-tuning step", ylabel=f"character accuracy (%), {over}", title="UUID memorization",
               ylim=(0, 101))
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
                  title=f"accuracy against budget ({'mean over seeds' if n_seeds > 1 else 'one seed'})",
                  ylim=(0, 101))
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> dict:
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sizes for a laptop CPU or one GPU")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                     parents=[preset])
    memorize_uuid.add_flags(parser)
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks (MoRA gets the same budgets)")
    parser.add_argument("--lrs", help="a grid tuned on --tune_seeds ('3e-3,1e-2'), or per method 'lora=1e-3:1e-2,...'")
    parser.add_argument("--tune_seeds", default="0", help="seeds for picking rates (by their mean); never reported")
    parser.add_argument("--alphas", help="LoRA's alpha as multiples of r (alpha_r), tuned with the rate: '1,2,4,8'")
    parser.add_argument("--seeds", help="comma-separated seeds to report (not the tuning seed)")
    parser.add_argument("--tune_only", action="store_true", help="stop after tuning (the sweep continues later)")
    parser.add_argument("--workers", type=train.numeric(int, positive=True), default=1,
                        help="processes that train runs at once (experiments.many): 2 on the 2-core CPU")
    parser.add_argument("--runs", type=train.numeric(int, positive=True), default=1,
                        help="runs batched in each process (experiments.many; on a GPU: 32)")
    parser.add_argument("--tag", help="results folder under out/uuid/; default: the preset's name")
    parser.set_defaults(**PRESETS[preset.parse_known_args(argv)[0].preset])
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if not set(methods) <= {"full", "lora", "mora"}:
        parser.error(f"--methods takes full, lora and mora, got {args.methods}")
    if args.alpha_r != parser.get_default("alpha_r"):
        parser.error(f"--alpha_r {args.alpha_r:g}: this sweep tunes LoRA's alpha over --alphas; give it there")
    ranks, seeds = [int(r) for r in args.ranks.split(",")], [int(s) for s in args.seeds.split(",")]
    tune_seeds, alphas = [int(s) for s in args.tune_seeds.split(",")], [float(a) for a in args.alphas.split(",")]
    if set(tune_seeds) & set(seeds):
        parser.error(f"--seeds {args.seeds} and --tune_seeds {args.tune_seeds} share a seed: the seeds rates are "
                     f"picked on are not reported")
    grids = parse_grid(args.lrs, methods)
    out_dir = os.path.join("out", "uuid", args.tag or args.preset)

    device, ctx, dtype = setup_device(args.device, args.dtype)
    base = load_base(args.base, args.preset)
    plan = [(m, r) for m in methods for r in ([None] if m == "full" else ranks)]
    combos = {m: [(lr, a) for a in (alphas if m == "lora" else [None]) for lr in grids[m]] for m in methods}
    n_runs = sum(len(combos[m]) * len(tune_seeds) for m, _ in plan if len(combos[m]) > 1) + len(plan) * len(seeds)
    enc = train.get_tokenizer(base["tokenizer"])
    examples = memorize_uuid.encode(memorize_uuid.make_pairs(args.pairs, seeds[0]), enc)
    memorize_uuid.check_fits(base, examples)
    length = examples["sequences"].shape[1]
    tuning_floor = memorize_uuid.format_floor(examples["values"])  # of the first reported seed's pairs: ~0.25 each
    flops, launches = estimate_flops(base, args, length, n_runs), estimate_launches(base, args, examples, n_runs,
                                                                                     device, ctx)
    print(f"{args.pairs} UUID pairs ({length} tokens each with padding), {args.steps} steps of {args.batch_size}, "
          f"base {base['source']} ({base['params']:,} parameters), seeds {seeds}, tuning seeds {tune_seeds}, "
          f"{n_runs} runs: about {flops / 1e15:.1f} PFLOP ({flops / H100_FLOPS / 60:.1f} minutes on one H100 at 40% "
          f"of its bf16 peak) and {launches / 1e6:.1f} million kernel launches eager ({launches * LAUNCH_S / 60:.1f} "
          f"minutes at 5 us each): an estimate of at most {(flops / H100_FLOPS + launches * LAUNCH_S) / 60:.1f} "
          f"minutes, compilation aside")

    flags_of = lambda method, alpha: argparse.Namespace(**{**vars(args), "base": base["source"],
                                                          **({"alpha_r": alpha} if method == "lora" else {})})

    def run(method, rank, lr, alpha, seed, label):  # alpha: LoRA's, a multiple of r (None for the others)
        return cached_run(base, method, rank or 8, lr, seed, flags_of(method, alpha), device, ctx, label)

    def ahead(runs: list[tuple]) -> None:  # (method, rank, lr, alpha, seed): trained in --workers processes, --runs
        if args.workers > 1 or args.runs > 1:  # batched, before the loops below read them from the cache
            from experiments import many  # (which imports this module)
            specs = [{"args": flags_of(m, a), "method": m, "rank": r or 8, "lr": lr, "seed": s}
                     for m, r, lr, a, s in runs]
            many.train_jobs(many.jobs_for(specs, args.preset, args.runs), args.workers)

    ahead([(m, r, g, a, s) for m, r in plan if len(combos[m]) > 1 for g, a in combos[m] for s in tune_seeds])
    picks, groups, tuning, all_runs = {}, {}, [], []
    for method, rank in plan:
        lr, alpha = combos[method][0]
        if len(combos[method]) > 1:
            scores = {(g, a): [mean_accuracy(run(method, rank, g, a, s, f"[tune] {name_of(method, rank, a)} lr={g:g} "
                                                 f"seed {s}")) for s in tune_seeds] for g, a in combos[method]}
            (lr, alpha), notes = pick(scores, grids[method], alphas, ONE_SEED_FLAT, floor=tuning_floor)
            tuning.append(f"tuning seeds {tune_seeds}, {name_of(method, rank)}: mean accuracy over checkpoints "
                          + ", ".join(f"{'/'.join(pct(x) for x in s)}% at {g:g}" + (f" alpha {a:g}r" if a else "")
                                      for (g, a), s in scores.items())
                          + f"; picked {lr:g}" + (f" alpha {alpha:g}r" if alpha else "")
                          + "".join(f". NOTE: {note}" for note in notes))
            print(tuning[-1])
        picks[method, rank] = lr, alpha
    if args.tune_only:
        return {"tuning": tuning}
    ahead([(m, r, lr, alpha, s) for (m, r), (lr, alpha) in picks.items() for s in seeds])
    for (method, rank), (lr, alpha) in picks.items():
        groups[method, rank] = [run(method, rank, lr, alpha, s, f"{name_of(method, rank, alpha)} lr={lr:g} seed {s}")
                                for s in seeds]
        all_runs += groups[method, rank]
    steps = [point["step"] for point in all_runs[0]["curve"]]
    floor = statistics.fmean(r["format_floor"] for r in all_runs)
    summary = summarize(groups, seeds, steps)
    lines = report(summary, tuning, floor, steps) + [""] + spectra_lines(all_runs)
    print("\n" + "\n".join(lines))
    results = {"args": vars(args), "base": base["source"], "dtype": dtype, "estimated_flops": flops,
               "estimated_launches": launches,
               "format_floor": floor, "tables": lines, "runs": all_runs,
               "summary": [{"method": m, "rank": r, **row} for (m, r), row in summary.items()]}
    write_json(os.path.join(out_dir, "results.json"), results)
    figure = os.path.join(out_dir, "memorize_uuid.png")
    drawn = plot(summary, floor, steps, len(seeds), figure)
    print(f"\nresults: {out_dir}/results.json" + (f", figure: {figure}" if drawn else ""))
    return results


if __name__ == "__main__":
    run_main(main, "experiments/memorize.py")
