"""
Continual pretraining on a new domain (the paper's §5.2: biomedicine and finance there; code here): a GPT pretrained
in full on the prose (--data pydoc) goes on to the standard library's source (experiments/corpus.py) with full
training, LoRA, MoRA (rotate and share) and their restarts, adapters at equal trainable parameters, each method at its
best on tuning seeds (experiments/pretraining.py's protocol: LoRA's alpha x rate, the others' rate), 3 reported seeds;
MoRA share and ReMoRA share either tuned the same way or, to halve their runs, at rotate's picks (--share_rates).

    python -m experiments.continual --preset cpu       # the 2-core CPU: parts of 45 minutes, two processes
    python -m experiments.continual --preset toy       # the whole path in seconds (a test)

Two measures, final values paired by seed between methods: adaptation, the validation loss on the held-out code files
(what the paper measures), and forgetting, the validation loss on the prose's held-out tenth after the run less before
it (the paper does not measure it). Every run evaluates the prose at each of train.py's evaluations, on the same
batches each time (train.py's fixed evaluation seed), step 0 being the base: out/compare/<tag>/<run>/prose.json.
Tables: stdout and out/continual/<preset>/results.json; with matplotlib, both losses over steps in continual.png.
"""

import argparse
import json
import os
import re
import time

import train
from experiments import pretraining
from experiments.harness import (interval_text, paired_difference, pyplot, run_main, save_figure, spread,
                                 spread_text, write_json)

# cpu grids: the adapters' began as pretraining.py's stdlib-cpu grids, which its tuning centred (LoRA 1e-2 at alpha
# 2r, MoRA 3e-2, docs/experiments.md); each grid then grew where its pick sat at an edge: full training's rate (to
# 3e-2), LoRA's rate (1e-1) and alpha (0.125r), ReLoRA's alpha (32r, then 128r) and rate (1e-3), and MoRA's and
# ReMoRA's rate (3e-3, where sharing's pick sat).
PRESETS = {  # base: the prose model's train.py flags; flags: every continued run's
    "cpu": {"base": "--lr 1e-2", "flags": "--max_iters 300 --warmup 20 --eval_interval 50 --merge_every 100",
            "lrs": "full=3e-4:1e-3:3e-3:1e-2:3e-2,lora=3e-3:1e-2:3e-2:1e-1,relora=1e-3:3e-3:1e-2:3e-2,"
                   "mora=3e-3:1e-2:3e-2:1e-1,remora=3e-3:1e-2:3e-2:1e-1",
            "alphas": "lora=0.125:0.5:2:8,relora=0.5:2:8:32:128", "workers": 2, "minutes": 45, "steps_per_s": 4,
            "share_rates": "tuned"},
    "toy": {"base": "--n_layer 1 --n_head 2 --n_embd 32 --block_size 32 --batch_size 4 --eval_iters 2 --warmup 2 "
                    "--max_iters 6 --eval_interval 3",
            "flags": "--batch_size 4 --eval_iters 2 --warmup 2 --max_iters 6 --eval_interval 3 --merge_every 3 "
                     "--rank 2",
            "lrs": "1e-2,3e-2", "alphas": "0.5", "workers": 1, "minutes": 60, "steps_per_s": 100,
            "share_rates": "tuned"},
}
SWEEPS = {"rotate": ("full,lora,mora,relora,remora", []), "share": ("mora,remora", ["--compress", "share"])}
GAPS = [("lora", "mora"), ("relora", "remora"), ("lora", "mora share"), ("relora", "remora share"),
        ("full", "mora")]  # a - b, paired by seed, for both measures


def train_with_prose(job: tuple) -> int:
    """pretraining.train_one, with each of train.py's evaluations also run on the prose, into out_dir/prose.json."""
    evaluate, prose, losses = train.evaluate, {}, []

    def code_and_prose(model, ids, args, device, ctx):
        if "val" not in prose:  # the base's tokenizer and the run's block size: args holds both by now
            prose["val"] = train.prepare(argparse.Namespace(**{**vars(args), "data": "pydoc"}))["val"]
        losses.append(evaluate(model, prose["val"], args, device, ctx))  # its own generator: training is unchanged
        write_json(os.path.join(args.out_dir, "prose.json"), losses)
        return evaluate(model, ids, args, device, ctx)

    train.evaluate = code_and_prose  # train.train looks it up at each evaluation
    try:
        return pretraining.train_one(job)
    finally:
        train.evaluate = evaluate


def prose_curve(out_dir: str, code: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(step, prose validation loss) at each evaluation of a finished run, whose code curve is `code`."""
    path = os.path.join(out_dir, "prose.json")
    if not os.path.exists(path):
        raise train.UserError(f"{out_dir} has no prose.json (trained outside experiments.continual?); delete it")
    return [(step, loss) for (step, _), loss in zip(code, json.load(open(path)))]


def plot(curves: dict, path: str) -> bool:
    """Both losses over steps, each method's mean and min-max over seeds."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, measure, title in zip(axes, ("code", "prose"), ("adaptation: held-out code files",
                                                             "forgetting: held-out prose (step 0: the base)")):
        for label, runs in curves.items():
            pretraining.draw_band(ax, label, [r[measure] for r in runs])
        ax.set(xlabel="step on the code", ylabel=f"validation loss, nats per byte ({len(runs)} seeds)", title=title)
    save_figure(fig, path)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    count, number = train.numeric(int, positive=True), train.numeric(float, positive=True)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="sizes: the 2-core CPU, toy")
    parser.add_argument("--tune_seeds", default="0,4", help="seeds the picks are made on; never reported")
    parser.add_argument("--seeds", default="1,2,3", help="the reported seeds")
    parser.add_argument("--minutes", type=number, help="a part's time (default: the preset's); run again to go on")
    parser.add_argument("--workers", type=count, help="runs at once, a process each (default: the preset's)")
    parser.add_argument("--share_rates", choices=("tuned", "rotate"), help="MoRA share's and ReMoRA share's rates: "
                        "tuned over the grids, or borrowed from rotate's picks (default: the preset's)")
    args = parser.parse_args(argv)
    preset, root = PRESETS[args.preset], os.path.join("out", "continual", args.preset)
    borrow = (args.share_rates or preset["share_rates"]) == "rotate"
    deadline = time.time() + 60 * (args.minutes or preset["minutes"])  # the base's training counts in it
    base_job = (os.path.join(root, "base"), "full", 1e-2, 1337, ["--data", "pydoc", *preset["base"].split()])
    pretraining.run(*base_job)  # trained here once: full training on the prose, full's pick on it (1e-2)
    base = os.path.join(pretraining.run_dir(*base_job)[0], "ckpt.pt")

    rows, tuning = {}, []
    for compress, (methods, flags) in SWEEPS.items():
        label = lambda method: method if compress == "rotate" else f"{method} {compress}"
        minutes = max(1e-3, (deadline - time.time()) / 60)  # what the part has left: each part trains one run at least
        borrowed = borrow and compress != "rotate"  # one rate per method, rotate's pick: pretraining.main tunes nothing
        lrs = ",".join(f"{m}={rows[m]['lr']:g}" for m in methods.split(",")) if borrowed else preset["lrs"]
        found = pretraining.main(
            ["--tag", f"continual-{args.preset}-{compress}", "--methods", methods, "--lrs", lrs,
             "--alphas", preset["alphas"], "--tune_seeds", args.tune_seeds, "--seeds", args.seeds,
             "--workers", str(args.workers or preset["workers"]), "--minutes", str(minutes),
             "--steps_per_s", str(preset["steps_per_s"]), "--init_from", base, "--data", pretraining.stdlib_corpus(),
             *preset["flags"].split(), *flags], trainer=train_with_prose)
        if "rows" not in found:
            return found  # the part's time is spent
        rows.update({label(method): {**row, "borrowed": borrowed} for method, row in found["rows"].items()})
        tuning += [re.sub(r"^(tuning seeds \[.*?\], )(\w+):", lambda m: m[1] + label(m[2]) + ":", line)
                   for line in found["tables"] if line.startswith("tuning seeds")]
        if borrowed:
            tuning.append(f"{', '.join(map(label, methods.split(',')))}: not tuned, at rotate's picks (--share_rates)")

    curves, lines = {}, ["Continual pretraining, prose -> code: final validation losses (nats per byte) over seeds "
                         f"{args.seeds}, each method at its pick on seeds {args.tune_seeds}:", "",
                         "| method | trainable | lr | alpha | code (adaptation) | prose before | prose after | "
                         "forgetting (after - before) |", "|---" * 8 + "|"]
    for label, row in rows.items():
        code = [pretraining.evals(list(map(json.loads, open(os.path.join(d, "metrics.jsonl"))))) for d in row["dirs"]]
        prose = [prose_curve(d, c) for d, c in zip(row["dirs"], code)]
        row["before"], row["after"] = [p[0][1] for p in prose], [p[-1][1] for p in prose]
        row["forgetting"] = [a - b for a, b in zip(row["after"], row["before"])]
        curves[label] = [{"code": c, "prose": p} for c, p in zip(code, prose)]
        show, alpha = lambda values: spread_text(spread(values), "{:.4f}".format), row["alpha_r"]
        lr = f"{row['lr']:g}" + (" (rotate's)" if row["borrowed"] else "")
        lines.append(f"| {label} | {row['trainable_params']:,} | {lr} | {f'{alpha:g}r' if alpha else '-'} | "
                     f"{show(row['losses'])} | {show(row['before'])} | {show(row['after'])} | "
                     f"{show(row['forgetting'])} |")
    lines += ["", "| a - b, paired by seed | code: mean | 95% interval | forgetting: mean | 95% interval |",
              "|---|---|---|---|---|"]
    for a, b in [(a, b) for a, b in GAPS if a in rows and b in rows]:
        code, forget = (paired_difference(rows[a][k], rows[b][k]) for k in ("losses", "forgetting"))
        lines.append(f"| {a} - {b} | {code['mean']:.4f} | {interval_text(code, '{:.4f}'.format)} | "
                     f"{forget['mean']:.4f} | {interval_text(forget, '{:.4f}'.format)} |")
    lines += ["", "Tuning, on the code's validation loss:", ""] + tuning
    print("\n" + "\n".join(lines))
    write_json(os.path.join(root, "results.json"), {"preset": args.preset, "base": base, "tables": lines,
                                                    "rows": rows, "curves": curves})
    figure = os.path.join(root, "continual.png")
    print(f"\nresults: {root}/results.json" + (f", figure: {figure}" if plot(curves, figure) else ""))
    return {"tables": lines, "rows": rows, "curves": curves}


if __name__ == "__main__":
    run_main(main, "experiments/continual.py")
