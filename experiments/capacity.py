"""
Memorization at convergence: how many bits of UUID per trainable parameter each method holds once its runs stop
improving (the capacity curve: more pairs, or a smaller rank), and which update rank does the work at equal
parameters (the ladder of compressions). memorize_uuid.py's runs, trained for --epochs passes over the pairs (a
larger set trains longer) at a constant rate after warmup, unless --min_lr_ratio decays it.

    python -m experiments.capacity --pair_counts 64                       # one point of the curve, seeds 1, 2, 3
    python -m experiments.capacity --pair_counts 64,256,1024 --tag curve  # the curve (finished runs are reused)
    python -m experiments.capacity --ranks 1,4 --lrs lora=2e-3:1e-3,mora=1e-1:5e-2,full=3e-3  # a rate per rank
    python -m experiments.capacity --ladder --pair_counts 64              # every compression, and LoRA at r = r^

The estimate printed first is arithmetic (steps x the seconds a step takes, --step_s); each finished run is cached
under out/uuid/runs/ (memorize's cache, keyed by everything that determines it), so a sweep stopped at any point
continues. A run has stopped improving when it memorized (>= 99% of the characters right) or converged (its loss
over the last quarter of checkpoints moved by less than --flat, a fraction, and ended below half its first value); a
run whose accuracy never left the format floor was too short to tell. Results: tables on stdout,
out/uuid/<tag>/capacity.json and, with matplotlib, out/uuid/<tag>/capacity.png.
"""

import argparse
import math
import os
import statistics

import memorize_uuid
import mora
import train
from model import setup_device
from experiments.harness import (interval_text, paired_difference, pyplot, run_main, save_figure, spread, spread_text,
                                 write_json)
from experiments.memorize import cached_run, load_base, pct

DONE = ("memorized", "converged")  # the runs that stopped improving
BITS_PER_PAIR = 122  # the value's random bits: a version-4 UUID's 128 less the 6 that fix its version and variant
# label: (memorize_uuid method, compression or None, the rank it trains at: "r", each of --ranks, or "r_hat", LoRA at
# MoRA-share's r^ for that budget; None for full fine-tuning)
CURVE = {"lora": ("lora", None, "r"), "mora share": ("mora", "share", "r"), "mora rotate": ("mora", "rotate", "r"),
         "full": ("full", None, None)}
LADDER = {"lora": ("lora", None, "r"), **{f"mora {c}": ("mora", c, "r") for c in mora.COMPRESSIONS},
          "lora r=r^": ("lora", None, "r_hat")}


def steps_for(pairs: int, args) -> int:
    return args.epochs * math.ceil(pairs / args.batch_size)


def loss_checkpoints(run: dict) -> tuple[float, float, float] | None:
    """The training loss at the first checkpoint, where the last quarter of checkpoints starts, and at the end."""
    losses = [point["loss"] for point in run["curve"] if point["loss"] is not None]
    return (losses[0], losses[-max(2, len(losses) // 4)], losses[-1]) if len(losses) >= 2 else None


def convergence(run: dict, floor: float, flat: float) -> str:
    """'memorized' (>= 99% of the characters: nothing left to learn), 'converged' (the loss flat over the last quarter
    of checkpoints, well below its start), 'still improving', or 'at the floor' (never left it: too short to tell).
    The loss covers the keys too (--loss_on all), which keep improving after every value is right: hence 'memorized'."""
    if run["curve"][-1]["char_acc"] >= 0.99:
        return "memorized"
    if max(point["char_acc"] for point in run["curve"]) <= floor + 0.02:
        return "at the floor"
    losses = loss_checkpoints(run)
    if losses is None:
        return "still improving"
    first, tail, last = losses
    moved = (tail - last) / tail if tail > 0 else 0.0
    return "converged" if moved < flat and last < 0.5 * first else "still improving"


def bits_per_parameter(pairs: int, run: dict) -> float:
    return pairs * BITS_PER_PAIR / run["trainable_params"]


def effective_rank(run: dict) -> float:  # mean over the adapted layers; size-independent (entropy of the spectrum)
    stats = [s for s in run["spectra"].values() if s is not None]
    return statistics.fmean(s["effective_rank"] for s in stats) if stats else math.nan


def report(rows: dict, floors: dict) -> list[str]:
    lines = ["| pairs (format floor) | r | method | trainable | bits per parameter | lr | steps | final char acc (%) | "
             "final exact match (%) | stays >= 90% from step | loss: first, last quarter, end | effective rank of dW | "
             "stopped improving |", "|---" * 13 + "|"]
    for (pairs, rank, label), runs in rows.items():
        acc = spread([r["curve"][-1]["char_acc"] for r in runs])
        exact = spread([r["curve"][-1]["exact_match"] for r in runs])
        reach = [memorize_uuid.sustained_step(r["curve"], 0.9) for r in runs]
        losses = [loss_checkpoints(r) for r in runs]
        losses = ", ".join(f"{statistics.fmean(x):.3f}" for x in zip(*losses)) if None not in losses else "-"
        states = [r["convergence"] for r in runs]
        first = runs[0]
        lines.append(f"| {pairs} ({pct(floors[pairs])}) | {rank or '-'} | {label} | {first['trainable_params']:,} | "
                     f"{bits_per_parameter(pairs, first):.2f} | {first['lr']:g} | {first['curve'][-1]['step']} | "
                     f"{spread_text(acc, pct)} | {spread_text(exact, pct)} | "
                     f"{', '.join('-' if s is None else str(s) for s in reach)} | {losses} | "
                     f"{statistics.fmean(effective_rank(r) for r in runs):.1f} | "
                     f"{sum(s in DONE for s in states)}/{len(states)} ({', '.join(sorted(set(states)))}) |")
    against_lora = [(p, r, label) for p, r, label in rows if label != "lora" and (p, r, "lora") in rows]
    if against_lora:
        lines += ["", "Paired difference against LoRA at the same budget of the final character accuracy (points):",
                  "", "| pairs | r | method - lora | mean | 95% interval | min-max | per seed |", "|---" * 7 + "|"]
    for pairs, rank, label in against_lora:
        final = {name: [r["curve"][-1]["char_acc"] for r in rows[pairs, rank, name]] for name in (label, "lora")}
        d = paired_difference(final[label], final["lora"])
        lines.append(f"| {pairs} | {rank} | {label} - lora | {pct(d['mean'])} | {interval_text(d, pct)} | "
                     f"{pct(d['min'])} to {pct(d['max'])} | {', '.join(pct(x) for x in d['diffs'])} |")
    return lines


def plot(rows: dict, floors: dict, ladder: bool, path: str) -> bool:
    """The curve: final accuracy against bits per trainable parameter. The ladder: final accuracy and speed against
    dW's effective rank."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2 if ladder else 1, figsize=(12 if ladder else 7, 4.5), squeeze=False)
    n = len(next(iter(rows.values())))
    seeds, rank_axis = f"{n} seed{'s' if n > 1 else ''}", "effective rank of dW (mean over layers)"
    last_step = max(r["curve"][-1]["step"] for runs in rows.values() for r in runs)
    for label in dict.fromkeys(label for *_, label in rows):
        points = sorted(((statistics.fmean(effective_rank(r) for r in runs) if ladder
                          else bits_per_parameter(pairs, runs[0]), runs)
                         for (pairs, _, l), runs in rows.items() if l == label), key=lambda point: point[0])
        x = [bits for bits, _ in points]
        finals = [[100 * r["curve"][-1]["char_acc"] for r in runs] for _, runs in points]
        # a run that never stays >= 90% is drawn at the last step: "not reached by the end"
        reached = [[memorize_uuid.sustained_step(r["curve"], 0.9) for r in runs] for _, runs in points]
        steps = [[last_step if step is None else step for step in per_seed] for per_seed in reached]
        for ax, values, center in zip(axes[0], (finals, steps), (statistics.fmean, statistics.median)):
            y = [center(v) for v in values]
            ax.errorbar(x, y, yerr=[[a - min(v) for a, v in zip(y, values)], [max(v) - a for a, v in zip(y, values)]],
                        marker="o", capsize=3, label=label)
    accuracy = axes[0][0]
    if not ladder:
        for i, floor in enumerate(sorted(set(floors.values()))):
            accuracy.axhline(100 * floor, ls="--", color="gray", label=None if i else "format floor")
        accuracy.set_xscale("log")
    accuracy.set(xlabel=rank_axis if ladder else f"bits of UUID per trainable parameter ({BITS_PER_PAIR} per pair)",
                 ylabel="final character accuracy (%)", ylim=(0, 101),
                 title=("Equal parameters" if ladder else f"After {last_step:,} steps") + f": mean, min-max, {seeds}")
    if ladder:
        axes[0][1].set(xlabel=rank_axis, ylim=(0, 1.05 * last_step),
                       ylabel=f"stays >= 90% from step ({last_step}: never)",
                       title=f"Speed: median and range, {seeds}")
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    memorize_uuid.add_flags(parser)
    count = train.numeric(int, positive=True)
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks (MoRA: their budgets); --ladder: one")
    parser.add_argument("--pair_counts", default="64", help="comma-separated numbers of pairs: the points of the curve")
    parser.add_argument("--epochs", type=count, default=600, help="passes over the pairs")
    parser.add_argument("--ladder", action="store_true", help="every compression and LoRA at r = r^, not the curve")
    parser.add_argument("--labels", help="comma-separated: run only these methods of the curve or ladder ('lora,full')")
    parser.add_argument("--lrs", default=memorize_uuid.RATES,
                        help="a rate per method (lora, mora, full) or per label ('mora share=1e-2'), or one per rank "
                             "('lora=2e-3:1e-3'); default: memorize_uuid.RATES, the demo's (tuned at r=8)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (not the tuning seed 0)")
    parser.add_argument("--flat", type=float, default=0.02, help="converged: the loss moved less over the last quarter")
    parser.add_argument("--step_s", type=float, default=0.15, help="seconds a step takes, for the estimate (the CPU "
                        "base on one core of this project's CPU: ~0.13, checkpoints included)")
    parser.add_argument("--tag", default="capacity", help="results folder under out/uuid/")
    parser.set_defaults(min_lr_ratio=1.0, eval_every=0, pairs=None, steps=None, methods=None)
    args = parser.parse_args(argv)
    instead = {"pairs": "--pair_counts 64,256", "steps": "--epochs (steps follow the pairs)", "methods": "--ladder"}
    for flag, replacement in instead.items():  # memorize_uuid's flags that this sweep sets itself
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} {getattr(args, flag)}: this sweep sets it; use {replacement}")
    if args.min_lr_ratio != 1.0:
        print(f"note: --min_lr_ratio {args.min_lr_ratio}: the rate decays, so the runs may stop before converging")
    plan = LADDER if args.ladder else CURVE
    labels = args.labels.split(",") if args.labels else list(plan)
    if not set(labels) <= set(plan):
        unknown = ", ".join(sorted(set(labels) - set(plan)))
        parser.error(f"--labels {args.labels}: {unknown} is none of {', '.join(plan)}")
    plan = {label: plan[label] for label in labels}
    pairs_list, ranks = [int(p) for p in args.pair_counts.split(",")], [int(r) for r in args.ranks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.ladder and len(ranks) > 1:
        parser.error(f"--ranks {args.ranks}: the ladder compares compressions at one budget; give one rank")
    try:  # harness.parse_lrs's form, but split at the last '=': a label may hold one ('lora r=r^=2e-4')
        rates = {label: [float(x) for x in grid.split(":")] for label, grid in
                 (item.rsplit("=", 1) for item in args.lrs.split(","))}
    except ValueError:
        parser.error(f"--lrs {args.lrs}: write label=rate or label=rate:rate (one per rank), comma-separated")
    runs_plan = []  # (rank, label, method, compress, which rank it trains at, rate); full fine-tuning runs once
    for rank in ranks:
        for label, (method, compress, which) in plan.items():
            grid = rates.get(label, rates.get(method))
            if grid is None or len(grid) not in (1, len(ranks)) or (method == "full" and len(grid) > 1):
                parser.error(f"--lrs {args.lrs}: {label!r} needs one rate" + ("" if method == "full" else
                             f" or one per rank of --ranks {args.ranks}") + f" (under {label!r} or {method!r})")
            if method == "full" and rank != ranks[0]:
                continue
            runs_plan.append((None if method == "full" else rank, label, method, compress, which,
                              grid[ranks.index(rank) if len(grid) > 1 else 0]))
    steps = len(seeds) * len(runs_plan) * sum(steps_for(p, args) for p in pairs_list)
    print(f"{len(pairs_list) * len(runs_plan) * len(seeds)} runs, {steps:,} steps in all: about "
          f"{steps * args.step_s / 60:.0f} minutes at {args.step_s} s a step (an estimate; finished runs are reused, "
          f"and decoding at the checkpoints comes on top)")

    device, ctx, _ = setup_device(args.device, args.dtype)
    base = load_base(args.base, "cpu")
    d = base["config"].n_embd
    rows, floors = {}, {}  # floors: the format floor of each point, the mean over its seeds' pairs
    for pairs in pairs_list:
        point = argparse.Namespace(**{**vars(args), "pairs": pairs, "steps": steps_for(pairs, args),
                                      "eval_every": args.eval_every or max(1, steps_for(pairs, args) // 20)})
        for rank, label, method, compress, which, lr in runs_plan:
            # full fine-tuning has no rank: 8 in its cache key, as experiments/memorize.py keys it
            trained_at = 8 if which is None else rank if which == "r" else mora.r_hat_of(d, d, rank)
            point.compress = compress or args.compress
            point.alpha_r = args.alpha_r  # a multiple of each LoRA's own r: LoRA at r = r^ scales alike
            runs = [cached_run(base, method, trained_at, lr, seed, point, device, ctx,
                               f"{pairs} pairs, {label}{f' r={rank}' if rank else ''} seed {seed}") for seed in seeds]
            floors[pairs] = statistics.fmean(run["format_floor"] for run in runs)
            rows[pairs, rank, label] = [{**run, "convergence": convergence(run, floors[pairs], args.flat)}
                                        for run in runs]
    lines = report(rows, floors)
    print("\n" + "\n".join(lines))
    out_dir = os.path.join("out", "uuid", args.tag)
    write_json(os.path.join(out_dir, "capacity.json"), {"args": vars(args), "tables": lines, "format_floor": floors,
                                                        "runs": {f"{p}/{r}/{l}": x for (p, r, l), x in rows.items()}})
    figure = os.path.join(out_dir, "capacity.png")
    print(f"\nresults: {out_dir}/capacity.json" + (f", figure: {figure}" if plot(rows, floors, args.ladder, figure)
                                                    else ""))
    return {"tables": lines, "rows": rows, "format_floor": floors}


if __name__ == "__main__":
    run_main(main, "experiments/capacity.py")
