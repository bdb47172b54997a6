"""What the sweeps share: statistics over seeds, rate selection on a held-out seed, atomic result files, figures,
and the digest of the code that determines a run (so a cached run is reused only for the identical experiment)."""

import hashlib
import importlib.util
import json
import math
import os
import statistics
import sys
import tarfile
import time

import train


def source_digest(*names: str) -> str:
    return hashlib.sha256(b"".join(open(os.path.join(os.path.dirname(__file__), "..", name), "rb").read()
                                   for name in names)).hexdigest()


# A changed rounding changes a run (the UUID ones are chaotic), so the code it executes is part of its key: a train.py
# run executes these three files; a UUID run memorize_uuid.py's finetune() too.
TRAIN_CODE = source_digest("mora.py", "model.py", "train.py")
UUID_CODE = source_digest("mora.py", "model.py", "train.py", "memorize_uuid.py")

T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# ^ the 97.5% quantile of Student's t with 1, 2, ..., 30 degrees of freedom (beyond: the normal's 1.96)


def code_digest(compress: str, uuid: bool = False) -> str:
    """The digest of the code a run executes (UUID_CODE for a UUID run, else TRAIN_CODE), and the source of a
    --compress module:Class: a fork's operator determines its runs too."""
    code = UUID_CODE if uuid else TRAIN_CODE
    module, colon, _ = compress.partition(":")
    if not colon:
        return code
    source = open(importlib.util.find_spec(module).origin, "rb").read()
    return hashlib.sha256(code.encode() + source).hexdigest()


def spread(values: list[float]) -> dict:
    """Over seeds. A run that diverged ends at inf (pretraining.final_loss): then the mean is not finite either."""
    diverged = sum(not math.isfinite(v) for v in values)
    std = 0.0 if len(values) == 1 else math.nan if diverged else statistics.stdev(values)
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "n": len(values),
            "diverged": diverged}


def spread_text(s: dict, show, with_range: bool = True) -> str:
    """'mean ± std (min-max)' of a spread(); for one seed, a demo, the value alone: there is no spread to show."""
    if s["diverged"]:
        return f"diverged on {s['diverged']} of {s['n']} seeds"
    if s["n"] == 1:
        return show(s["mean"])
    return f"{show(s['mean'])} ± {show(s['std'])}" + (f" ({show(s['min'])}-{show(s['max'])})" if with_range else "")


def paired_difference(a: list[float], b: list[float]) -> dict:
    """a - b, paired by seed: mean, the 95% Student-t interval of the mean (none for one pair), min and max."""
    diffs = [x - y for x, y in zip(a, b)]
    summary = spread(diffs)
    n = len(diffs)
    t = T_975[n - 2] if n - 2 < len(T_975) else 1.96
    half = t * summary["std"] / math.sqrt(n) if n > 1 else math.nan
    return {**summary, "ci95": (summary["mean"] - half, summary["mean"] + half), "diffs": diffs}


def interval_text(d: dict, show) -> str:
    """The 95% interval of a paired_difference(); one seed has none, nor a pair with a diverged run."""
    if d["diverged"]:
        return "none: a run diverged"
    return f"{show(d['ci95'][0])} to {show(d['ci95'][1])}" if d["n"] > 1 else "none: one seed"


def parse_grid(text: str, methods: list[str], flag: str = "--lrs") -> dict[str, list[float]]:
    """'1e-2,3e-2': one grid for every method; 'lora=3e-3:1e-2,mora=3e-2': a grid (or one fixed value) per method.
    --lrs's rates, or --alphas's multiples of r (for the methods that have an alpha)."""
    try:
        if "=" not in text:
            return {m: [float(x) for x in text.split(",")] for m in methods}
        grids = {m: [float(x) for x in xs.split(":")] for m, xs in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise train.UserError(f"{flag} {text} is not a grid: write '1,2' (every method) or 'lora=1:2,mora=3' "
                              f"(per method)") from None
    missing = [m for m in methods if m not in grids]
    if missing:
        raise train.UserError(f"{flag} {text} gives no value for {missing}")
    return grids


def pick(scores: dict, grid: list[float], alphas: list, tolerance: float,
         floor: float | None = None) -> tuple[tuple, list[str]]:
    """The (rate, alpha) with the highest mean score over the tuning seeds (alpha None for a method without one) and
    every reason the pick may not be an interior optimum, so that a table can say so: a rate or alpha at the edge of
    its grid (widen it); LoRA's alpha not tuned (one value tried); flat (a neighbouring rate at that alpha scores
    within the tuning seeds' spread, or, with one tuning seed, within `tolerance` of the pick); at the floor (no
    combination scores above `floor`: the pick is noise). scores: {(rate, alpha): [a score per tuning seed]}."""
    mean = {combo: statistics.fmean(s) for combo, s in scores.items()}
    lr, alpha = best = max(mean, key=mean.get)
    notes = []
    if len(grid) > 1 and grid.index(lr) in (0, len(grid) - 1):
        notes.append(f"its best rate {lr:g} is at the edge of the grid {grid}; widen it")
    if alpha is not None and len(alphas) == 1:
        notes.append(f"alpha not tuned: {alpha:g}r is the only one tried")
    elif alpha is not None and alphas.index(alpha) in (0, len(alphas) - 1):
        notes.append(f"its best alpha {alpha:g}r is at the edge of {alphas}; widen it")
    seeds = len(scores[best])
    low, high = (min(scores[best]), max(scores[best])) if seeds > 1 else (mean[best] - tolerance, mean[best])
    neighbours = [grid[i] for i in (grid.index(lr) - 1, grid.index(lr) + 1) if 0 <= i < len(grid)]
    if any(low <= mean[n, alpha] <= high for n in neighbours):
        notes.append("flat: a neighbouring rate scores within the tuning seeds' spread" if seeds > 1 else
                     f"flat: one tuning seed, and a neighbouring rate scores within {tolerance:g} of the pick")
    if floor is not None and max(mean.values()) <= floor:
        notes.append(f"at the floor: no combination scores above {floor:.3g}, so the pick is noise")
    return best, notes


def write_json(path: str, obj) -> None:
    """Write, then rename: a result file is whole or absent, never half-written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def fit_part(pending: list, seconds, deadline: float) -> tuple[list, float]:
    """A part's jobs: the first of pending whose estimated seconds (a function of a job) fit before the deadline, at
    least one; and their total."""
    chosen, total = [], 0.0
    for job in pending:
        if time.time() + total + seconds(job) > deadline and chosen:
            break
        chosen.append(job)
        total += seconds(job)
    return chosen, total


def pack(path: str, paths: list[str]) -> None:
    """Files and folders under out/ in one gzipped tar, written then renamed: a cache that travels between machines."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tarfile.open(path + ".tmp", "w:gz") as tar:
        for name in paths:
            tar.add(name, arcname=name)
    os.replace(path + ".tmp", path)


def unpack(path: str) -> None:
    """A pack's files into out/ here, keeping every file already present (a cached run never changes)."""
    if not os.path.isfile(path):
        raise train.UserError(f"--unpack {path}: no such file")
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("out/") and ".." not in m.name
                   and not os.path.exists(m.name)]
        tar.extractall(members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    print(f"unpacked {len(members)} new files from {path}")


def pyplot():
    """matplotlib.pyplot drawing to files, or None without matplotlib (figures are optional)."""
    try:
        import matplotlib
    except ImportError:
        print("(pip install matplotlib for the figure)")
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
    pyplot().close(fig)  # pyplot keeps every figure until closed: a sweep's figures would pile up


def run_main(main, name: str) -> None:
    """A script's main(): a mistake in its flags or files ends it with one line and exit code 2, as in train.py."""
    try:
        main()
    except train.UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)
