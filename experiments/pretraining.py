"""
Pretraining comparison (the paper's §5.3, Table 3): run train.py for several methods, pick each method's learning
rate on a tuning seed, then report the final validation loss of each at its rate over other seeds. Any other
train.py flag passes through.

    python -m experiments.pretraining --tune_only       # the five methods over a 5-rate grid on seed 0: CPU ~2 h
    python -m experiments.pretraining                   # then 3 reporting seeds at each pick: ~65 min more
    python -m experiments.pretraining --methods lora,mora --rank 21 --compress share --lrs 1e-3,3e-3,1e-2,3e-2 \
        --tag share-r21
    python -m experiments.pretraining --lrs 1e-3,3e-3,1e-2 --n_layer 12 --n_head 12 --n_embd 768 --max_iters 5000

Protocol: the tuning seed picks the rate with the lowest final validation loss; its runs are never reported. The
reported figure is the final validation loss (not the best over evaluations, which would be early stopping on the
reported split), as mean ± std and min-max over the seeds, with the gaps paired by seed and their 95% intervals:
LoRA - MoRA and ReLoRA - ReMoRA (the method), LoRA - ReLoRA and MoRA - ReMoRA (the restarts). A run that diverges
stops early and counts as the worst loss. Runs go to out/compare/<tag>/<method>-lr<lr>-seed<seed>/ and a finished
run is not repeated, so an interrupted sweep continues. Tables: stdout and out/compare/<tag>/results.json; with
matplotlib, the validation curves in out/compare/<tag>/pretraining.png. The times above: summed runs, one CPU core.
"""

import argparse
import json
import math
import os

import train
from experiments.harness import (code_digest, interval_text, paired_difference, pick_rate, pyplot, run_main,
                                 save_figure, spread, spread_text, write_json)

GAPS = [("lora", "mora"), ("relora", "remora"), ("lora", "relora"), ("mora", "remora")]  # a - b, paired by seed


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


def run(root: str, method: str, lr: float, seed: int, train_flags: list[str]) -> list[dict]:
    """The records (metrics.jsonl) of one finished train.py run, training it first if needed."""
    out_dir = os.path.join(root, f"{method}-lr{lr:g}-seed{seed}")
    flags = flags_for(method, train_flags) + ["--method", method, "--lr", str(lr), "--seed", str(seed), "--out_dir",
                                               out_dir]
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
    if any(config.get(k) != v for k, v in vars(wanted).items()):
        raise train.UserError(f"{out_dir} holds a run with other flags; pass another --tag or delete that folder")
    done = any(r["kind"] == "summary" for r in records)
    same_code = os.path.exists(code) and json.load(open(code))["digest"] == code_digest(wanted.compress)  # else anew
    return records if done and same_code else None


def nats(loss: float) -> str:
    return f"{loss:.4f}"


def final_loss(records: list[dict]) -> float:
    loss = next(r for r in records if r["kind"] == "summary")["final_val_loss"]
    return loss if math.isfinite(loss) else math.inf


def evals(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["iter"], r["val_loss"]) for r in records if r["kind"] == "eval"]


def plot(curves: dict[str, list[list[tuple[int, float]]]], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in curves.items():
        steps = [s for s, _ in runs[0]]
        losses = [[loss for _, loss in r] for r in runs]
        mean = [sum(column) / len(column) for column in zip(*losses)]
        line, = ax.plot(steps, mean, marker="o", ms=3, label=label)
        ax.fill_between(steps, [min(c) for c in zip(*losses)], [max(c) for c in zip(*losses)],
                        color=line.get_color(), alpha=0.2)
    n = len(next(iter(curves.values())))
    ax.set(xlabel="step", ylabel=f"validation loss, mean and min-max over {n} seeds" if n > 1 else
           "validation loss, one seed: a demo", title="Pretraining with adapters")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--methods", default=",".join(train.METHODS), help="comma-separated methods to compare")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2,1e-1",
                        help="comma-separated learning-rate grid, tuned per method")
    parser.add_argument("--tune_seed", type=train.numeric(int), default=0,
                        help="seed the rates are picked on; not reported")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds to report")
    parser.add_argument("--tune_only", action="store_true", help="stop after tuning (the sweep continues later)")
    parser.add_argument("--tag", default="default", help="name of this sweep, its folder under out/compare/")
    args, train_flags = parser.parse_known_args(argv)
    methods = args.methods.split(",")
    lrs = [float(lr) for lr in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [m for m in methods if m not in train.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(train.METHODS)}")
    if args.tune_seed in seeds:
        parser.error(f"--seeds {args.seeds} contains --tune_seed {args.tune_seed}, which is not reported")
    for method in methods:  # reject bad train.py flags before the first run
        train.parse_args(flags_for(method, train_flags) + ["--method", method])
    root = os.path.join("out", "compare", args.tag)

    rows, tuning = {}, []
    for method in methods:
        tuned = [final_loss(run(root, method, lr, args.tune_seed, train_flags)) for lr in lrs]
        lr, warning = pick_rate(lrs, [-loss for loss in tuned])
        shown = [f"{loss:.4f} at {g:g}" if math.isfinite(loss) else f"diverged at {g:g}" for loss, g in zip(tuned, lrs)]
        tuning.append(f"tuning seed {args.tune_seed}, {method}: final val loss " + ", ".join(shown) + f"; picked {lr:g}"
                      + (f". WARNING: {warning}" if warning else ""))
        print(tuning[-1])
        rows[method] = {"lr": lr}
    if args.tune_only:
        return {"tuning": tuning}

    curves = {}
    for method in methods:
        runs = [run(root, method, rows[method]["lr"], seed, train_flags) for seed in seeds]
        summary = next(r for r in runs[0] if r["kind"] == "summary")
        rows[method].update(trainable_params=summary["trainable_params"], losses=[final_loss(r) for r in runs])
        curves[f"{method} (lr {rows[method]['lr']:g})"] = [evals(r) for r in runs]

    lines = [f"Final validation loss over seeds {seeds} (rates picked on seed {args.tune_seed}):", "",
             "| method | trainable params | lr | final val loss, mean ± std | min-max | ppl of the mean |",
             "|---|---|---|---|---|---|"]
    for method, row in rows.items():
        s = spread(row["losses"])
        lines.append(f"| {method} | {row['trainable_params']:,} | {row['lr']:g} | "
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
    results = {"train_flags": train_flags, "lrs": lrs, "tune_seed": args.tune_seed, "seeds": seeds, "rows": rows,
               "tables": lines, "curves": curves}
    write_json(os.path.join(root, "results.json"), results)
    figure = os.path.join(root, "pretraining.png")
    print(f"\nresults: {root}/results.json" + (f", figure: {figure}" if plot(curves, figure) else ""))
    return results


if __name__ == "__main__":
    run_main(main, "experiments/pretraining.py")
