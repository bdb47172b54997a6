"""
Pretraining comparison: run train.py for several methods, each over the same grid of learning rates, and print each
method at its best rate (the paper tuned every method's rate separately). Any other train.py flag passes through.

    python compare.py                                               # the README table: 5 methods x 3 rates, CPU ~40 min
    python compare.py --methods lora,mora --rank 32                 # a higher rank ratio
    python compare.py --methods relora,remora --merge_every 100 --tag merge100
    python compare.py --lrs 1e-3,3e-3 --n_layer 12 --n_head 12 --n_embd 768 --max_iters 5000   # on a GPU

Runs go to out/compare/<tag>/<method>-lr<lr>/ and a finished run is not repeated, so an interrupted sweep continues
where it stopped. The table is printed and written to out/compare/<tag>/results.json.
"""

import argparse
import json
import math
import os
from dataclasses import asdict

import train


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--methods", default=",".join(train.METHODS), help="comma-separated methods to compare")
    parser.add_argument("--lrs", default="3e-3,1e-2,3e-2", help="comma-separated learning rates, the same for all")
    parser.add_argument("--tag", default="default", help="name of this sweep, its folder under out/compare/")
    args, train_flags = parser.parse_known_args(argv)
    methods = args.methods.split(",")
    lrs = [float(lr) for lr in args.lrs.split(",")]
    unknown = [m for m in methods if m not in train.METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(train.METHODS)}")
    train.parse_args(train_flags)  # reject bad train.py flags before the first run
    root = os.path.join("out", "compare", args.tag)

    rows = []
    for method in methods:
        runs = []
        for lr in lrs:
            out_dir = os.path.join(root, f"{method}-lr{lr:g}")
            flags = train_flags + ["--method", method, "--lr", str(lr), "--out_dir", out_dir]
            summary = finished(out_dir, flags)
            if summary is None:
                summary = train.main(flags)
            runs.append({"lr": lr, "val_loss": summary["best_val_loss"],
                         "trainable_params": summary["trainable_params"], "wall_time_s": summary["wall_time_s"]})
        best = min(runs, key=lambda run: run["val_loss"] if math.isfinite(run["val_loss"]) else math.inf)
        rows.append({"method": method, "best_lr": best["lr"], "val_loss": best["val_loss"],
                     "val_ppl": math.exp(best["val_loss"]), "trainable_params": best["trainable_params"], "runs": runs})

    print("\n| method | trainable params | best lr | val loss | val ppl | "
          + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    print("|---|---|---|---|---|" + "---|" * len(lrs))
    for row in rows:
        print(f"| {row['method']} | {row['trainable_params']:,} | {row['best_lr']:g} | {row['val_loss']:.4f} | "
              f"{row['val_ppl']:.2f} | " + " | ".join(f"{run['val_loss']:.4f}" for run in row["runs"]) + " |")
    results = {"train_flags": train_flags, "lrs": lrs, "rows": rows}
    tmp = os.path.join(root, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(root, "results.json"))
    return rows


def finished(out_dir: str, flags: list[str]) -> dict | None:
    """The summary of a run with these flags that completed in out_dir, if there is one."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    records = list(map(json.loads, open(path)))
    config = {k: v for k, v in records[0].items() if k != "kind"}
    wanted = asdict(train.parse_args(flags))
    wanted["model"]["vocab_size"] = config["model"]["vocab_size"]  # set by the tokenizer
    if config != wanted:
        raise train.UserError(f"{out_dir} holds a run with other flags; pass another --tag or delete that folder")
    summaries = [r for r in records if r["kind"] == "summary"]
    return summaries[-1] if summaries else None


if __name__ == "__main__":
    try:
        main()
    except (train.UserError, train.data.DataError) as e:
        raise SystemExit(f"compare.py: error: {e}")
