"""
What each method holds at a plateau (issue 28): memorize_uuid.py's UUID runs along the number of pairs at one rank,
every method at its best at every point (LoRA: alpha x rate; MoRA rotate and share: rate; full fine-tuning, the
ceiling: rate), each run trained until it stops improving; then the ladder of compressions where rotate's lead over
LoRA is widest. Parts: each invocation trains what is left and fits --minutes, then stops; run it again to go on.

    python -m experiments.capacity --preset cpu       # the 2-core CPU: parts of 45 minutes (two worker processes)
    python -m experiments.capacity --preset gpu       # one H200: parts of 9 minutes, base included (not run yet)
    python -m experiments.capacity --preset gpu --pack capacity-gpu.tar.gz     # the runs and base in one file
    python -m experiments.capacity --unpack capacity-gpu.tar.gz                # on the machine they travel to
    python -m experiments.capacity --preset toy --device cpu                   # the whole study in seconds (a test)
    python -m experiments.capacity --points 64 --grid 4,8,16 --alphas 2,8,32 --labels "lora,mora rotate" --tune_only
                                                        # a probe past the CPU preset's edges: two methods' tuning
    python -m experiments.capacity --points 16 --min_steps 3000 --grid 1,2,4 --alphas 8,32,128,512 \
        --labels "lora,mora rotate" --no-ladder --tag capacity-cpu-16       # one point, long enough to plateau

A part prints its estimate first: the runs it will train, of those left in the current stage. Stages, each read from
the run cache of the one before: (1) tuning at every point on two tuning seeds, never reported, at the report's step
budget, by the final character accuracy (harness.pick notes a pick at an edge, flat or at the floor); (2) the
reported seeds at each pick; (3) the ladder's tuning at the point where rotate - LoRA is widest, and (4) its reported
seeds (--no-ladder: not). Then the tables (stdout and out/uuid/<tag>/capacity.json), the paired differences, and with
matplotlib the figure.

The measure: a run is offered pairs x 122 random bits (a version-4 UUID's 128, less the 6 its version and variant
fix) per trainable parameter. It stores (exact) its exact matches x 122 (a value that also ends where it should: one
right character by character that runs on counts as none), or (characters) pairs x 122 x the fraction of the
characters above the format floor that it gets right, (acc - floor) / (1 - floor): a proxy, not an information
measure. A run stopped improving when it memorized (>= 99% of the characters) or plateaued (its accuracy moved by
less than --flat over the last quarter of its checkpoints); one never 2 points above the floor is at the floor,
however flat. Every run decays its rate to a tenth (memorize_uuid's cosine) over epochs x pairs / batch steps, or
--min_steps if more: a few pairs still take thousands of steps (at r=2, 16 pairs took LoRA about 2,000).
"""

import argparse
import math
import os
import statistics
import time

import memorize_uuid
import mora
import train
from model import setup_device
from experiments import harness, many
from experiments.harness import (fit_part, interval_text, paired_difference, pick, pyplot, run_main, save_figure,
                                 spread, spread_text, write_json)
from experiments.memorize import cached_result, load_base, pct

BITS_PER_PAIR = 122
METHODS = {"lora": ("lora", None), "mora rotate": ("mora", "rotate"), "mora share": ("mora", "share"),
           "full": ("full", None)}  # label: (memorize_uuid method, compression)
LADDER = {"lora": ("lora", None), **{f"mora {c}": ("mora", c) for c in mora.COMPRESSIONS}}
GRID = (0.25, 0.5, 1, 2, 4)  # tuning grids: each method's demo rate (memorize_uuid.RATES, scaled) times these
PRESETS = {  # rates: memorize_uuid.RATES (picked at r=8, 64 pairs, 1,200 steps) times GRID; LoRA's alpha around 128r
    "cpu": {"base": None, "rank": 2, "points": "8,16,32,64", "epochs": 400, "alphas": "32,128,512",
            "grid": "0.5,1,2,4", "workers": 2, "runs": 1, "minutes": 45, "steps_per_s": 14.0, "device": "cpu",
            "dtype": "float32"},
    "gpu": {"base": None, "rank": 8, "points": "32,64,128,256,512,1024", "epochs": 1000, "alphas": "32,128,512",
            "grid": "0.25,0.5,1,2,4", "workers": 4, "runs": 32, "minutes": 9, "steps_per_s": 3000.0,
            "device": "cuda", "dtype": "bfloat16"},
    "toy": {"base": None, "rank": 2, "points": "4,8", "epochs": 2, "alphas": "32,128", "grid": "1,2",
            "workers": 1, "runs": 2, "minutes": 60, "steps_per_s": 100.0, "device": "cpu", "dtype": "float32"},
}
BASE_NAMES = {"cpu": "cpu", "gpu": "capacity-gpu", "toy": "capacity-toy"}  # memorize.load_base's preset names
TOY_BASE = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "80", "--max_iters", "4",
            "--batch_size", "4", "--eval_iters", "1", "--eval_interval", "4"]


def steps_for(pairs: int, args) -> int:
    return max(args.min_steps, args.epochs * pairs // args.batch_size)


def run_flags(args, pairs: int, compress: str | None, alpha_r: float | None) -> argparse.Namespace:
    """memorize_uuid's flags for one point and method: the steps follow the pairs, 20 checkpoints a run."""
    steps = steps_for(pairs, args)
    return argparse.Namespace(**{**vars(args), "pairs": pairs, "steps": steps, "eval_every": max(1, steps // 20),
                                 "compress": compress or "rotate", "alpha_r": alpha_r or 128.0, "min_lr_ratio": 0.1})


def grid_of(method: str, args) -> list[float]:
    base_rate = dict(item.split("=") for item in memorize_uuid.RATES.split(","))[method]
    return [float(base_rate) * float(f) for f in args.grid.split(",")]


def specs(points: list[int], labels: dict, args, seeds: list[int], picks: dict | None) -> list[dict]:
    """Every run of a stage: tuning (picks None: each label's grid on the tuning seeds) or reporting (each label at its
    pick, on the reported seeds). A run: its point, label, flags, method, rank, rate, seed."""
    runs = []
    for pairs in points:
        for label, (method, compress) in labels.items():
            alphas = [float(a) for a in args.alphas.split(",")] if method == "lora" else [None]
            combos = [picks[pairs, label]] if picks else [(lr, a) for a in alphas for lr in grid_of(method, args)]
            runs += [{"pairs": pairs, "label": label, "args": run_flags(args, pairs, compress, alpha),
                      "method": method, "rank": args.rank, "lr": lr, "seed": seed, "alpha_r": alpha}
                     for lr, alpha in combos for seed in seeds]
    return runs


def results_of(runs: list[dict], base: dict, device) -> list[dict | None]:
    return [cached_result(base, r["method"], r["rank"], r["lr"], r["seed"], r["args"], device) for r in runs]


def train_part(pending: list[dict], args, deadline: float) -> None:
    """Trains, in --workers processes of --runs batched runs each, the pending runs that fit before the deadline
    (estimated: steps over --steps_per_s, plus a sixth for the checkpoints); prints the estimate first."""
    seconds = lambda run: 7 / 6 * run["args"].steps / args.steps_per_s
    chosen, total = fit_part(pending, seconds, deadline)
    left = sum(map(seconds, pending)) - total
    print(f"this part: {len(chosen)} of the stage's {len(pending)} runs left, about {total / 60:.0f} minutes at "
          f"{args.steps_per_s:g} steps/s ({args.workers} process(es) x {args.runs} batched); then about "
          f"{left / 60:.0f} minutes more in this stage", flush=True)
    many.train_jobs(many.jobs_for(chosen, BASE_NAMES[args.preset], args.runs), args.workers)


def stopped(run: dict, floor: float, flat: float) -> str:
    """'memorized', 'plateau', 'at the floor' (never 2 points above it) or 'still improving': see the docstring."""
    accuracy = [point["char_acc"] for point in run["curve"]]
    if accuracy[-1] >= 0.99:
        return "memorized"
    if max(accuracy) <= floor + 0.02:
        return "at the floor"
    tail = accuracy[-max(2, len(accuracy) // 4):]
    return "plateau" if max(tail) - min(tail) < flat else "still improving"


def stored_bits(run: dict, pairs: int, floor: float) -> tuple[float, float]:
    """(exact, characters): bits per trainable parameter, by the docstring's formulas."""
    end = run["curve"][-1]
    above = max(0.0, (end["char_acc"] - floor) / (1 - floor))
    per_parameter = pairs * BITS_PER_PAIR / run["trainable_params"]
    return end["exact_match"] * per_parameter, above * per_parameter


def tuning_picks(runs: list[dict], found: list[dict], args) -> tuple[dict, list[str]]:
    """Each (point, label)'s pick by the mean final accuracy over the tuning seeds, and its tuning line."""
    scores, picks, lines = {}, {}, []
    for run, result in zip(runs, found):
        scores.setdefault((run["pairs"], run["label"]), {}).setdefault((run["lr"], run["alpha_r"]), []).append(
            result["curve"][-1]["char_acc"])
    alphas = [float(a) for a in args.alphas.split(",")]
    for (pairs, label), by_combo in scores.items():
        grid = sorted({lr for lr, _ in by_combo})
        floor = statistics.fmean(r["format_floor"] for run, r in zip(runs, found) if run["pairs"] == pairs)
        picks[pairs, label], notes = pick(by_combo, grid, alphas, 0.02, floor=floor)
        shown = ", ".join(f"{'/'.join(pct(x) for x in s)}% at {lr:g}" + (f" alpha {a:g}r" if a else "")
                          for (lr, a), s in by_combo.items())
        lr, alpha = picks[pairs, label]
        lines.append(f"{pairs} pairs, {label}: final accuracy {shown}; picked {lr:g}"
                     + (f" alpha {alpha:g}r" if alpha else "") + "".join(f". NOTE: {n}" for n in notes))
    return picks, lines


def report(rows: dict, args) -> list[str]:
    """rows: (pairs, label) -> {"runs": reported runs, "floor"}: the table and the paired differences against LoRA."""
    lines = ["| pairs (floor %) | method | trainable | offered bits/param | lr | final char acc (%) | exact (%) | "
             "stored bits/param: exact | : characters | stays >= 90% from step | stopped improving |",
             "|---" * 11 + "|"]
    for (pairs, label), row in rows.items():
        runs, floor = row["runs"], row["floor"]
        bits = [stored_bits(r, pairs, floor) for r in runs]
        states = [stopped(r, floor, args.flat) for r in runs]
        reach = [memorize_uuid.sustained_step(r["curve"], 0.9) for r in runs]
        first = runs[0]
        lr = f"{first['lr']:g}" + (f" (alpha {first['alpha'] / first['rank']:g}r)" if first["alpha"] else "")
        lines.append(f"| {pairs} ({pct(floor)}) | {label} | {first['trainable_params']:,} | "
                     f"{pairs * BITS_PER_PAIR / first['trainable_params']:.2f} | {lr} | "
                     f"{spread_text(spread([r['curve'][-1]['char_acc'] for r in runs]), pct)} | "
                     f"{spread_text(spread([r['curve'][-1]['exact_match'] for r in runs]), pct, with_range=False)} | "
                     f"{spread_text(spread([b[0] for b in bits]), '{:.3f}'.format, with_range=False)} | "
                     f"{spread_text(spread([b[1] for b in bits]), '{:.3f}'.format)} | "
                     f"{', '.join('-' if s is None else str(s) for s in reach)} | "
                     f"{sum(s in ('memorized', 'plateau') for s in states)}/{len(states)} "
                     f"({', '.join(sorted(set(states)))}) |")
    paired = []
    for (pairs, label), row in rows.items():
        if label in ("lora", "full") or (pairs, "lora") not in rows:
            continue
        lora = rows[pairs, "lora"]
        acc = paired_difference(*([r["curve"][-1]["char_acc"] for r in x["runs"]] for x in (row, lora)))
        bits = paired_difference(*([stored_bits(r, pairs, x["floor"])[1] for r in x["runs"]] for x in (row, lora)))
        paired.append(f"| {pairs} | {label} - lora | {pct(acc['mean'])} | {interval_text(acc, pct)} | "
                      f"{', '.join(pct(x) for x in acc['diffs'])} | {bits['mean']:.3f} | "
                      f"{interval_text(bits, '{:.3f}'.format)} |")
    header = ["", "Paired against LoRA at the same point, by seed: final character accuracy (points) and stored bits "
                  "per parameter (characters):", "", "| pairs | method - lora | accuracy: mean | 95% interval | "
                  "per seed | bits/param: mean | 95% interval |", "|---" * 7 + "|"]
    return lines + (header + paired if paired else [])


def min_max_bars(groups: list[list[float]]) -> list[list[float]]:
    """matplotlib's yerr from each group's mean down to its min and up to its max; never below zero (the mean of equal
    values can round an ulp past them, and matplotlib refuses a negative bar)."""
    means = [statistics.fmean(g) for g in groups]
    return [[max(0.0, m - min(g)) for m, g in zip(means, groups)],
            [max(0.0, max(g) - m) for m, g in zip(means, groups)]]


def plot(rows: dict, ladder: dict, path: str) -> bool:
    """Left: stored against offered bits per parameter (the diagonal: every bit kept). Right, if the ladder ran: its
    final accuracy against the update's effective rank."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2 if ladder else 1, figsize=(12 if ladder else 6, 4.5), squeeze=False)
    curve, rungs = axes[0][0], axes[0][-1]
    for label in dict.fromkeys(label for _, label in rows):
        points = sorted((pairs, row) for (pairs, l), row in rows.items() if l == label)
        offered = [pairs * BITS_PER_PAIR / row["runs"][0]["trainable_params"] for pairs, row in points]
        stored = [[stored_bits(r, pairs, row["floor"])[1] for r in row["runs"]] for pairs, row in points]
        mean = [statistics.fmean(s) for s in stored]
        curve.errorbar(offered, mean, yerr=min_max_bars(stored), marker="o", capsize=3, label=label)
    top = max(pairs * BITS_PER_PAIR / row["runs"][0]["trainable_params"] for (pairs, _), row in rows.items())
    curve.plot([1e-3, top], [1e-3, top], ls="--", color="gray", label="every offered bit stored")
    curve.set(xscale="log", yscale="log", xlabel=f"offered: UUID bits per trainable parameter ({BITS_PER_PAIR} a pair)",
              ylabel="stored (characters above the floor), bits per parameter",
              title=f"At the end of each run: mean and min-max over {len(next(iter(rows.values()))['runs'])} seeds")
    for (pairs, label), row in ladder.items():  # none: no right panel
        ranks = [statistics.fmean(s["effective_rank"] for s in r["spectra"].values() if s) for r in row["runs"]]
        finals = [100 * r["curve"][-1]["char_acc"] for r in row["runs"]]
        rungs.errorbar([statistics.fmean(ranks)], [statistics.fmean(finals)], yerr=min_max_bars([finals]), marker="o",
                       capsize=3, label=label)
    if ladder:
        rungs.set(xlabel="effective rank of dW (mean over layers)", ylabel="final character accuracy (%)",
                  ylim=(0, 101), title=f"The ladder at {next(iter(ladder))[0]} pairs, equal parameters")
    save_figure(fig, path)
    return True


def pack(path: str, base: dict) -> None:
    """The run cache and the base (run keys hold its weights' digest) in one file (harness.pack)."""
    folder, runs = os.path.dirname(base["source"]), os.path.join("out", "uuid", "runs")
    harness.pack(path, [runs, folder])
    print(f"packed {path}: {len(os.listdir(runs))} runs and {folder}")


def main(argv: list[str] | None = None) -> dict:
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sizes: the 2-core CPU, one GPU, toy")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                     parents=[preset])
    memorize_uuid.add_flags(parser)
    count, number = train.numeric(int, positive=True), train.numeric(float, positive=True)
    parser.add_argument("--rank", type=count, help="LoRA rank of every point (MoRA: its budget)")
    parser.add_argument("--points", help="comma-separated numbers of pairs: the points of the curve")
    parser.add_argument("--epochs", type=count, help="passes over the pairs: a run's steps are epochs x pairs / batch")
    parser.add_argument("--min_steps", type=count, default=1, help="a run's fewest steps, whatever its epochs give")
    parser.add_argument("--alphas", help="LoRA's alpha / r, tuned with the rate at every point")
    parser.add_argument("--grid", help="each method's tuning grid: memorize_uuid.RATES times these")
    parser.add_argument("--tune_seeds", default="0,4", help="the seeds picks are made on; never reported")
    parser.add_argument("--seeds", default="1,2,3", help="the reported seeds")
    parser.add_argument("--labels", default=",".join(METHODS), help=f"the curve's methods, of {', '.join(METHODS)}")
    parser.add_argument("--tune_only", action="store_true", help="stop after tuning, printing it (to probe a grid)")
    parser.add_argument("--ladder", action=argparse.BooleanOptionalAction, default=True,
                        help="the ladder of compressions after the curve (--no-ladder: stop at the curve)")
    parser.add_argument("--flat", type=number, default=0.02, help="a plateau: accuracy moved less in the last quarter")
    parser.add_argument("--workers", type=count, help="processes training at once (experiments.many)")
    parser.add_argument("--runs", type=count, help="runs batched in each process (1: one by one)")
    parser.add_argument("--minutes", type=number, help="a part's time: it trains what fits, then stops")
    parser.add_argument("--steps_per_s", type=number, help="all runs' steps per second together, for the estimate")
    parser.add_argument("--tag", help="results folder under out/uuid/; default: capacity-<preset>")
    parser.add_argument("--pack", help="write the run cache and the base into this file, then stop")
    parser.add_argument("--unpack", help="add a pack's runs and base to out/ here, then stop")
    instead = {"pairs": "--points", "steps": "--epochs", "eval_every": "20 a run", "compress": "the ladder",
               "alpha_r": "--alphas", "min_lr_ratio": "0.1", "methods": "its four methods and the ladder"}
    parser.set_defaults(**{**PRESETS[preset.parse_known_args(argv)[0].preset], **dict.fromkeys(instead)})
    args = parser.parse_args(argv)
    deadline = time.time() + 60 * args.minutes  # the base's pretraining counts in a part's minutes
    for flag, replacement in instead.items():  # memorize_uuid's flags that this study sets itself
        if getattr(args, flag) is not None:
            parser.error(f"--{flag} {getattr(args, flag)}: this study sets it ({replacement})")
    if args.unpack:
        return harness.unpack(args.unpack) or {}
    tune_seeds, seeds = [int(s) for s in args.tune_seeds.split(",")], [int(s) for s in args.seeds.split(",")]
    points = [int(p) for p in args.points.split(",")]
    if set(tune_seeds) & set(seeds):
        parser.error(f"--seeds {args.seeds} and --tune_seeds {args.tune_seeds} share a seed, which is not reported")
    curve_labels = args.labels.split(",")
    if not set(curve_labels) <= set(METHODS):
        parser.error(f"--labels {args.labels}: choose from {', '.join(METHODS)}")
    if args.ladder and not args.tune_only and not {"lora", "mora rotate"} <= set(curve_labels):
        parser.error(f"--labels {args.labels}: the ladder needs rotate's lead over LoRA; keep both, or add --no-ladder")
    methods = {label: METHODS[label] for label in curve_labels}
    out_dir = os.path.join("out", "uuid", args.tag or f"capacity-{args.preset}")
    device = setup_device(args.device, args.dtype)[0]
    # the CPU preset's base is the demo's (its runs can be experiments.memorize's); a GPU pretrains its own
    base = load_base(args.base, BASE_NAMES[args.preset], TOY_BASE if args.preset == "toy" else None)
    args.base = base["source"]  # the workers load this checkpoint; a run's key holds its path and weights' digest
    if args.pack:
        return pack(args.pack, base) or {}

    stages = [("tuning", methods, tune_seeds, None), ("reported", methods, seeds, "picks")]
    if args.ladder:
        stages += [("ladder tuning", LADDER, tune_seeds, None), ("ladder", LADDER, seeds, "picks")]
    picks, tuning_lines, rows, ladder_point = {}, [], {"ladder": {}}, None
    for stage, labels, stage_seeds, uses in stages:
        where = [ladder_point] if stage.startswith("ladder") else points
        runs = specs(where, labels, args, stage_seeds, picks if uses else None)
        found = results_of(runs, base, device)
        pending = [run for run, result in zip(runs, found) if result is None]
        if pending:
            print(f"stage {stage}: {len(runs) - len(pending)} of {len(runs)} runs done")
            train_part(pending, args, deadline)
            found = results_of(runs, base, device)
            if any(result is None for result in found):
                print("the part's time is spent: run the same command again to go on (every finished run is cached)")
                return {"stage": stage, "done": sum(r is not None for r in found), "of": len(runs)}
        if uses is None:
            new_picks, lines = tuning_picks(runs, found, args)
            picks.update(new_picks)
            tuning_lines += [line for line in lines if line not in tuning_lines]  # the ladder shares LoRA's, ...
            if args.tune_only:
                print("\n".join(["Tuning (final character accuracy on the tuning seeds):", ""] + tuning_lines))
                return {"tables": tuning_lines, "picks": picks}
        else:
            table = {}
            for run, result in zip(runs, found):
                table.setdefault((run["pairs"], run["label"]), []).append(result)
            block = {key: {"runs": rs, "floor": statistics.fmean(r["format_floor"] for r in rs)}
                     for key, rs in table.items()}
            rows[stage] = block
            # the ladder goes where rotate's lead over LoRA in final accuracy is widest
            if stage == "reported" and args.ladder:
                lead = {p: statistics.fmean(a["curve"][-1]["char_acc"] - b["curve"][-1]["char_acc"] for a, b in
                                            zip(block[p, "mora rotate"]["runs"], block[p, "lora"]["runs"]))
                        for p in points}
                ladder_point = max(lead, key=lead.get)

    steps = ", ".join(f"{p} pairs {steps_for(p, args)}" for p in points)
    ladder = ["", f"The ladder at {ladder_point} pairs:", ""] + report(rows["ladder"], args) if rows["ladder"] else []
    lines = ([f"The curve: rank {args.rank}, seeds {seeds} (picked on {tune_seeds}); steps a run: {steps}", ""]
             + report(rows["reported"], args) + ladder
             + ["", "Tuning (final character accuracy on the tuning seeds):", ""] + tuning_lines)
    print("\n" + "\n".join(lines))
    write_json(os.path.join(out_dir, "capacity.json"), {"args": vars(args), "tables": lines,
                                                        "ladder_point": ladder_point,
                                                        "runs": {f"{stage}/{p}/{label}": row["runs"]
                                                                 for stage, block in rows.items()
                                                                 for (p, label), row in block.items()}})
    figure = os.path.join(out_dir, "capacity.png")
    drawn = plot(rows["reported"], rows["ladder"], figure)
    print(f"\nresults: {out_dir}/capacity.json" + (f", figure: {figure}" if drawn else ""))
    return {"tables": lines, "rows": rows, "ladder_point": ladder_point, "picks": picks}


if __name__ == "__main__":
    run_main(main, "experiments/capacity.py")
