"""
Pretraining comparison (the paper's §5.3, Table 3): run train.py for several methods, pick each method's learning
rate (LoRA's and ReLoRA's with their alpha) on tuning seeds, then report the final validation loss of each at its
pick over other seeds. Any other train.py flag passes through, to the methods that use it.

    python -m experiments.pretraining --methods mora --lrs 3e-3,1e-2,3e-2 --tune_only       # MoRA's rate on 2 seeds
    python -m experiments.pretraining --methods lora --alphas 2,8,32 --lrs 1e-3,3e-3,1e-2 --tune_only   # LoRA's
    python -m experiments.pretraining --lrs lora=1e-3:3e-3:1e-2,mora=3e-3:1e-2:3e-2 --alphas 2,8,32   # 3 seeds each
    python -m experiments.pretraining --methods lora,mora --rank 21 --compress share --lrs 1e-3,3e-3,1e-2,3e-2 \
        --tag share-r21
    python -m experiments.pretraining --lrs 1e-3,3e-3,1e-2 --n_layer 12 --n_head 12 --n_embd 768 --max_iters 5000
    python -m experiments.pretraining --preset stdlib-gpu    # on code (experiments/corpus.py), 6 x 512: one H200
    python -m experiments.pretraining --preset stdlib-cpu    # the same comparison, reduced for a 2-core CPU

Protocol: the tuning seeds pick the (rate, alpha) with the lowest mean final validation loss (harness.pick, which
notes every pick that is not an interior optimum: at an edge, alpha not tuned, or flat: a neighbouring rate within
the tuning seeds' spread, or within 0.01 on one seed); their runs are never reported. The reported figure is the
final validation loss (not the best over evaluations, which would be early stopping on the reported split), as mean
± std and min-max over the seeds, with the gaps paired by seed and their 95% intervals: LoRA - MoRA and ReLoRA -
ReMoRA (the method), LoRA - ReLoRA and MoRA - ReMoRA (the restarts), full - MoRA (the ceiling). A run that diverges
stops early and counts as the worst loss. Runs go to out/compare/<tag>/<method>[-alpha<alpha>]-lr<lr>-seed<seed>/,
and a finished run is not repeated, so an interrupted sweep continues. Tables: stdout and
out/compare/<tag>/results.json; with matplotlib, the validation curves in out/compare/<tag>/pretraining.png. The
times above: summed runs, one CPU core.
A preset (PRESETS) sets the model, corpus, grids and a part's size: each invocation trains the runs that fit its
--minutes, --workers processes at once, printing its estimate first, and the next goes on; --pack carries the runs'
records to another machine, whose --unpack adds them to its cache.
"""

import argparse
import json
import math
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import torch

import train
from experiments import corpus
from experiments.harness import (code_digest, fit_part, interval_text, pack, paired_difference, parse_grid, pick,
                                 pyplot, run_main, save_figure, spread, spread_text, unpack, write_json)

# The comparison on code (issue 31): the standard library's source (experiments/corpus.py), whose 12 MB a model of
# this size does not memorize. Grids: stdlib-cpu's are centred on its picks (docs/experiments.md: full 3e-3, LoRA and
# ReLoRA 1e-2 at alpha 2r, MoRA and ReMoRA 3e-2); stdlib-gpu's are those picks x 128 / 512 (a hidden matrix's rate
# ~ 1 / width) rounded onto the 1-3-10 grid, a step either side.
PRESETS = {
    "stdlib-gpu": {  # one H200: 6 x 512, so that every adapted layer takes the operator route (mora.DENSE_MAX_WEIGHTS)
        "flags": "--n_layer 6 --n_head 8 --n_embd 512 --block_size 256 --batch_size 64 --max_iters 2000 --warmup 100 "
                 "--eval_interval 200 --merge_every 500 --device cuda",
        "lrs": "full=3e-4:1e-3:3e-3,lora=1e-3:3e-3:1e-2,relora=1e-3:3e-3:1e-2,mora=3e-3:1e-2:3e-2,"
                "remora=3e-3:1e-2:3e-2", "alphas": "0.5,2,8", "workers": 8, "minutes": 9, "steps_per_s": 100.0},
    "stdlib-cpu": {  # the same comparison, reduced for the 2-core CPU: the default GPT's width, 2 layers, 400 steps
        "flags": "--n_layer 2 --max_iters 400 --eval_interval 50 --merge_every 100",
        "lrs": "full=1e-3:3e-3:1e-2,lora=3e-3:1e-2:3e-2,relora=3e-3:1e-2:3e-2,mora=1e-2:3e-2:1e-1,"
                "remora=1e-2:3e-2:1e-1", "alphas": "0.5,2,8", "workers": 2, "minutes": 45, "steps_per_s": 10.0},
    "stdlib-toy": {  # the path in seconds: a test
        "flags": "--n_layer 1 --n_head 2 --n_embd 32 --block_size 32 --batch_size 4 --eval_iters 2 --warmup 2 "
                 "--max_iters 6 --eval_interval 3 --merge_every 3 --rank 2",
        "lrs": "1e-2,3e-2", "alphas": "0.5", "workers": 1, "minutes": 60, "steps_per_s": 100.0},
}
GAPS = [("lora", "mora"), ("relora", "remora"), ("lora", "relora"), ("mora", "remora"),
        ("full", "mora")]  # a - b, paired by seed
ONE_SEED_FLAT = 0.01  # with one tuning seed, a neighbouring rate within 0.01 nats makes a pick "flat"


def flags_for(method: str, train_flags: list[str]) -> list[str]:
    """train_flags less those that do nothing for `method` (train.py refuses them): a sweep passes every method one
    list ('--rank 21 --compress share' to LoRA and MoRA alike). Flags are '--name value' or '--name=value'."""
    kept, i = [], 0
    while i < len(train_flags):
        flag, rest = train_flags[i], train_flags[i + 1:]
        width = 1 if "=" in flag or not rest or rest[0].startswith("--") else 2  # --compile takes no value
        if method in train.ONLY_FOR.get(flag.split("=")[0].removeprefix("--"), (method,)):
            kept += train_flags[i:i + width]
        i += width
    return kept


def run_dir(root: str, method: str, lr: float, seed: int, train_flags: list[str]) -> tuple[str, list[str]]:
    """A run's folder and its train.py flags."""
    flags = flags_for(method, train_flags) + ["--method", method, "--lr", str(lr), "--seed", str(seed)]
    alpha = train.parse_args(flags).alpha  # LoRA's, absolute, when the flags set it: a run of its own
    out_dir = os.path.join(root, f"{method}{f'-alpha{alpha:g}' if alpha else ''}-lr{lr:g}-seed{seed}")
    return out_dir, flags + ["--out_dir", out_dir]


def run(root: str, method: str, lr: float, seed: int, train_flags: list[str]) -> list[dict]:
    """The records (metrics.jsonl) of one finished train.py run, training it first if needed."""
    out_dir, flags = run_dir(root, method, lr, seed, train_flags)
    records = finished(out_dir, flags)
    if records is None:
        train.main(flags)
        write_json(os.path.join(out_dir, "code.json"), {"digest": code_digest(train.parse_args(flags).compress)})
        records = finished(out_dir, flags)
    return records


def finished(out_dir: str, flags: list[str]) -> list[dict] | None:
    """The records of a run with these flags that completed in out_dir with this code, if there is one."""
    path, code = os.path.join(out_dir, "metrics.jsonl"), os.path.join(out_dir, "code.json")
    if not os.path.exists(path):
        return None
    records = list(map(json.loads, open(path)))
    config, wanted = records[0] if records else {}, train.parse_args(flags)  # build_model adds what the model fixes
    own = () if wanted.init_from == "scratch" else train.MODEL_FLAGS  # a fine-tuned model's come from its base
    if any(config.get(k) != v for k, v in vars(wanted).items() if v is not None and k not in own):
        raise train.UserError(f"{out_dir} holds a run with other flags; pass another --tag or delete that folder")
    done = any(r["kind"] == "summary" for r in records)
    same_code = os.path.exists(code) and json.load(open(code))["digest"] == code_digest(wanted.compress)  # else anew
    return records if done and same_code else None


def stdlib_corpus() -> str:
    """The folder of this Python's standard-library corpus, built once (experiments/corpus.py)."""
    out = os.path.join("out", "data", f"stdlib-{platform.python_version()}")
    if not os.path.exists(os.path.join(out, "files.json")):
        corpus.main(["--out", out])
    return out


def pack_runs(path: str, root: str) -> dict:
    """What finished() reads of every run under root (its records and code digest; prose.json, experiments.continual's
    evaluations), in one file that travels between machines; the checkpoints stay."""
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
                   if name in ("metrics.jsonl", "code.json", "prose.json"))
    pack(path, files)
    print(f"packed {path}: {len(files)} files of {root}")
    return {"packed": path, "files": len(files)}


def part_spent(stage: str, jobs: list[tuple]) -> dict:
    done = sum(finished(*run_dir(*job)) is not None for job in jobs)
    print(f"the part's time is spent ({stage}: {done} of {len(jobs)} runs done): run the same command again to go on")
    return {"stage": stage, "done": done, "of": len(jobs)}


def nats(loss: float) -> str:
    return f"{loss:.4f}"


def final_loss(records: list[dict]) -> float:
    loss = next(r for r in records if r["kind"] == "summary")["final_val_loss"]
    return loss if math.isfinite(loss) else math.inf


def evals(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["iter"], r["val_loss"]) for r in records if r["kind"] == "eval"]


def draw_band(ax, label: str, runs: list[list[tuple[int, float]]]) -> None:
    """Curves of (step, loss) over seeds: their mean, and the min-max band around it."""
    steps, losses = [s for s, _ in runs[0]], list(zip(*[[loss for _, loss in r] for r in runs]))
    line, = ax.plot(steps, [sum(c) / len(c) for c in losses], marker="o", ms=3, label=label)
    ax.fill_between(steps, [min(c) for c in losses], [max(c) for c in losses], color=line.get_color(), alpha=0.2)


def plot(curves: dict[str, list[list[tuple[int, float]]]], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in curves.items():
        draw_band(ax, label, runs)
    n = len(next(iter(curves.values())))
    ax.set(xlabel="step", ylabel=f"validation loss, mean and min-max over {n} seeds" if n > 1 else
           "validation loss, one seed: a demo", title="Pretraining with adapters")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    save_figure(fig, path)
    return True


def train_one(job: tuple) -> int:
    """A worker's task: one run (root, method, lr, seed, flags), trained unless it finished before."""
    run(*job)
    return 1


def train_pending(jobs: list[tuple], args, deadline: float, trainer) -> bool:
    """Trains the jobs that have not finished and fit before the deadline (estimated: steps over --steps_per_s, all
    processes together, plus a sixth for the evaluations), in --workers processes; prints the estimate first. Returns
    whether every job has finished."""
    pending = [job for job in jobs if finished(*run_dir(*job)) is None]
    if not pending:
        return True
    seconds = lambda job: 7 / 6 * train.parse_args(run_dir(*job)[1]).max_iters / args.steps_per_s
    chosen, total = fit_part(pending, seconds, deadline)
    print(f"this part: {len(chosen)} of the {len(pending)} runs left in this stage, about {total / 60:.0f} minutes at "
          f"{args.steps_per_s:g} steps/s ({args.workers} process(es)); then about "
          f"{(sum(map(seconds, pending)) - total) / 60:.0f} minutes more in this stage", flush=True)
    if args.workers == 1:
        list(map(trainer, chosen))
    else:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool or CUDA state inherited
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            list(pool.map(trainer, chosen))
    return len(chosen) == len(pending)


def main(argv: list[str] | None = None, trainer=train_one) -> dict:
    """trainer: what trains one job (experiments/continual.py's also records the prose's loss)."""
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--preset", choices=sorted(PRESETS), help="the comparison on code, sized for a machine "
                                                                  "(default: none, the flags given decide)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                     parents=[preset])
    count, number = train.numeric(int, positive=True), train.numeric(float, positive=True)
    parser.add_argument("--methods", default=",".join(train.METHODS), help="comma-separated methods to compare")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2,1e-1",
                        help="a grid tuned per method ('1e-3,1e-2'), or one per method 'lora=1e-3:1e-2,mora=1e-2'")
    parser.add_argument("--alphas", default="2", help="LoRA's and ReLoRA's alpha as multiples of r, tuned with the "
                        "rate: '2,8,32', or 'lora=0.5:2,relora=2:8' (one value: not tuned, and the tables say so)")
    parser.add_argument("--tune_seeds", default="0,4", help="seeds the picks are made on (by their mean); not reported")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds to report")
    parser.add_argument("--tune_only", action="store_true", help="stop after tuning (the sweep continues later)")
    parser.add_argument("--tag", help="name of this sweep, its folder under out/compare/; default: the preset's")
    parser.add_argument("--workers", type=count, default=1, help="runs training at once, each in its own process")
    parser.add_argument("--minutes", type=number, help="a part's time: it trains the runs that fit, then stops")
    parser.add_argument("--steps_per_s", type=number, default=5.0, help="all processes' steps/s, for the estimate")
    parser.add_argument("--pack", help="write the sweep's finished runs (records, not checkpoints) to this file; stop")
    parser.add_argument("--unpack", help="add a pack's runs to out/ here, then stop")
    chosen = preset.parse_known_args(argv)[0].preset
    parser.set_defaults(**{k: v for k, v in PRESETS.get(chosen, {}).items() if k != "flags"})
    args, train_flags = parser.parse_known_args(argv)
    deadline = time.time() + 60 * args.minutes if args.minutes else math.inf
    if chosen:  # the preset's flags first: a flag given here overrides it
        train_flags = PRESETS[chosen]["flags"].split() + ["--data", stdlib_corpus()] + train_flags
    methods = args.methods.split(",")
    seeds, tune_seeds = [int(s) for s in args.seeds.split(",")], [int(s) for s in args.tune_seeds.split(",")]
    unknown = [m for m in methods if m not in train.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(train.METHODS)}")
    if set(tune_seeds) & set(seeds):
        parser.error(f"--seeds {args.seeds} and --tune_seeds {args.tune_seeds} share a seed, which is not reported")
    if any(flag.split("=")[0] == "--alpha" for flag in train_flags):
        parser.error("--alpha: this sweep tunes LoRA's alpha over --alphas (multiples of --rank); give it there")
    for method in methods:  # reject bad train.py flags before the first run
        train.parse_args(flags_for(method, train_flags) + ["--method", method])
    grids = parse_grid(args.lrs, methods)
    alphas = parse_grid(args.alphas, [m for m in methods if m in train.ONLY_FOR["alpha"]], "--alphas")
    if set(alphas) - set(train.ONLY_FOR["alpha"]):
        parser.error(f"--alphas {args.alphas}: only {' and '.join(train.ONLY_FOR['alpha'])} have an alpha")
    rank = train.parse_args(flags_for("lora", train_flags) + ["--method", "lora"]).rank
    with_alpha = lambda alpha: train_flags + (["--alpha", f"{alpha * rank:g}"] if alpha else [])  # a multiple of r
    root = os.path.join("out", "compare", args.tag or chosen or "default")
    if args.unpack:
        return unpack(args.unpack) or {}
    if args.pack:
        return pack_runs(args.pack, root)

    combos = {m: [(lr, a) for a in alphas.get(m, [None]) for lr in grids[m]] for m in methods}
    tuned_methods = [m for m in methods if len(combos[m]) > 1]
    tuning_jobs = [(root, m, lr, seed, with_alpha(a))
                   for m in tuned_methods for lr, a in combos[m] for seed in tune_seeds]
    if not train_pending(tuning_jobs, args, deadline, trainer):
        return part_spent("tuning", tuning_jobs)
    rows, tuning = {}, []
    for method in methods:
        lr, alpha = combos[method][0]
        if method in tuned_methods:
            tuned = {(g, a): [final_loss(run(root, method, g, seed, with_alpha(a))) for seed in tune_seeds]
                     for g, a in combos[method]}
            (lr, alpha), notes = pick({c: [-loss for loss in losses] for c, losses in tuned.items()}, grids[method],
                                      alphas.get(method, []), ONE_SEED_FLAT)
            shown = [("/".join(f"{x:.4f}" if math.isfinite(x) else "diverged" for x in losses) + f" at {g:g}"
                      + (f" alpha {a:g}r" if a else "")) for (g, a), losses in tuned.items()]
            tuning.append(f"tuning seeds {tune_seeds}, {method}: final val loss " + ", ".join(shown) + f"; picked "
                          f"{lr:g}" + (f" alpha {alpha:g}r" if alpha else "") + "".join(f". NOTE: {n}" for n in notes))
            print(tuning[-1])
        rows[method] = {"lr": lr, "alpha_r": alpha}
    if args.tune_only:
        return {"tuning": tuning}
    reported = [(root, m, rows[m]["lr"], seed, with_alpha(rows[m]["alpha_r"])) for m in methods for seed in seeds]
    if not train_pending(reported, args, deadline, trainer):
        return part_spent("reported", reported)

    curves = {}
    for method in methods:
        jobs = [job for job in reported if job[1] == method]
        runs = [run(*job) for job in jobs]
        summary = next(r for r in runs[0] if r["kind"] == "summary")
        rows[method].update(trainable_params=summary["trainable_params"], losses=[final_loss(r) for r in runs],
                            dirs=[run_dir(*job)[0] for job in jobs])
        alpha = f", alpha {rows[method]['alpha_r']:g}r" if rows[method]["alpha_r"] else ""
        curves[f"{method} (lr {rows[method]['lr']:g}{alpha})"] = [evals(r) for r in runs]

    unit = "byte" if train.parse_args(flags_for("full", train_flags)).tokenizer == "bytes" else "token"
    lines = [f"Final validation loss, nats per {unit}, over seeds {seeds} (picked on seeds {tune_seeds}):", "",
             "| method | trainable params | lr | alpha | final val loss, mean ± std | min-max | ppl of the mean |",
             "|---|---|---|---|---|---|---|"]
    for method, row in rows.items():
        s, alpha = spread(row["losses"]), f"{row['alpha_r']:g}r" if row["alpha_r"] else "-"
        lines.append(f"| {method} | {row['trainable_params']:,} | {row['lr']:g} | {alpha} | "
                     f"{spread_text(s, nats, with_range=False)} | {s['min']:.4f}-{s['max']:.4f} | "
                     f"{math.exp(s['mean']):.2f} |")
    gaps = [(a, b) for a, b in GAPS if a in rows and b in rows]
    if gaps:
        lines += ["", "| gap, paired by seed | mean | 95% interval | min-max | per seed |", "|---|---|---|---|---|"]
        for a, b in gaps:
            d = paired_difference(rows[a]["losses"], rows[b]["losses"])
            lines.append(f"| {a} - {b} | {d['mean']:.4f} | {interval_text(d, nats)} | "
                         f"{d['min']:.4f} to {d['max']:.4f} | {', '.join(f'{x:.4f}' for x in d['diffs'])} |")
    lines += [""] + tuning
    print("\n" + "\n".join(lines))
    results = {"train_flags": train_flags, "lrs": grids, "alphas": alphas, "tune_seeds": tune_seeds, "seeds": seeds,
               "rows": rows,
               "tables": lines, "curves": curves}
    write_json(os.path.join(root, "results.json"), results)
    figure = os.path.join(root, "pretraining.png")
    print(f"\nresults: {root}/results.json" + (f", figure: {figure}" if plot(curves, figure) else ""))
    return results


if __name__ == "__main__":
    run_main(main, "experiments/pretraining.py")
