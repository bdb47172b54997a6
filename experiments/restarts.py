"""
Do restarts help, and why: ReLoRA and ReMoRA against LoRA and MoRA in pretraining (the paper's §5.3), as the MoRA
authors ran them and at each method's own rate, how often to merge, and ReMoRA two ways. Any other train.py flag
passes through (--max_iters, --rank, ...); runs are experiments/pretraining.py's, cached and resumable.

    python -m experiments.restarts --part rank          # the accumulated update's rank after k restarts: seconds
    python -m experiments.restarts --part paper --lrs lora=1e-2,mora=1e-2 --seeds 1,2,3 --max_iters 1000
    python -m experiments.restarts --part tuned --lrs lora=1e-2,relora=1e-2,mora=1e-2,remora=1e-2 --max_iters 1000
    python -m experiments.restarts --part merge_every --lrs relora=1e-2,remora=1e-2 --max_iters 1000
    python -m experiments.restarts --part remora --lrs remora=1e-2 --max_iters 1000
    python -m experiments.restarts --part reset --lrs relora=1e-2,remora=1e-2 --max_iters 1000
    python -m experiments.restarts --part paper --lrs lora=1e-2,mora=1e-2 --max_iters 10 --eval_iters 2 --tag smoke

Every part but rank runs the MoRA authors' schedule scaled to --max_iters: their 10,000-step run warms up for 1,000
steps, merges every 2,000, then warms up again for 50 steps into a fresh cosine from the rate reached down to zero,
Adam state dropped; so here a warmup of max_iters/10, a merge every max_iters/5 and a re-warmup of 1/40 of that
(train.py --schedule cycle --min_lr_ratio 0). The base methods never merge, so pick their rates with
experiments/pretraining.py --warmup <max_iters/10> --min_lr_ratio 0, and the restarted ones' with the jagged flags
below. Parts. paper: each method and its restarted twin at one shared rate (the base method's, as the paper gives
one rate for all), under that schedule. tuned: each at its own rate, the twin under ReLoRA's jagged cosine instead
(--schedule jagged: re-warm within the one cosine the base method follows), same merges, warmups and floor.
merge_every: the jagged twins at their rates merging every N steps, and never (the base method at the twin's rate).
reset: tuned's jagged twins, whose restarts drop Adam's state (step count too), against ReLoRA's resets, which keep
the step and prune the moments (train.py --reset random: all but 0.1% zeroed; magnitude: all but the largest 10%).
remora: ReMoRA with sharing, this project's random permutations against the authors' variant, which alternates
sharing's grouping at every merge (interleaved, then contiguous) and permutes nothing: AlternatingShare and its
restart hook below, a fork's way to change what a restart does without touching train.py. --methods lora or mora
runs half of paper, tuned, merge_every or reset (two halves side by side on two cores; then the whole command reads
both from the cache). Runs: out/compare/<tag>/<run>/, shared by the parts where they coincide; tables: stdout and
out/compare/<tag>/<part>.json.
"""

import argparse
import contextlib
import os

import torch

import mora
import train
from experiments.harness import interval_text, paired_difference, parse_grid, run_main, spread, spread_text, write_json
from experiments.pretraining import final_loss, flags_for, nats, run

TWINS = {"relora": "lora", "remora": "mora"}  # a restarted method and the one it restarts
RESTARTED = {base: twin for twin, base in TWINS.items()}
AUTHORS_FLAGS = ("--schedule", "--warmup", "--merge_every", "--restart_warmup", "--min_lr_ratio")
AUTHORS_COMPRESSION = "experiments.restarts:AlternatingShare"  # train.py's --compress module:Class


class AlternatingShare(mora.Share):
    """The MoRA authors' ReMoRA compression: sharing whose grouping flips at every restart (see authors_restarts)."""


def alternate_groupings(model: torch.nn.Module) -> None:
    """After a restart: each AlternatingShare layer takes the other grouping and drops the random permutations that
    MoRALinear.reset_adapter drew, so the next cycle's update lands on the other grouping's subspace."""
    for layer in mora.adapter_layers(model).values():
        if isinstance(getattr(layer, "compression", None), AlternatingShare):
            layer.compression.contiguous = not layer.compression.contiguous
            layer.in_perm.copy_(torch.arange(layer.in_features))
            layer.out_perm.copy_(torch.arange(layer.out_features))
            layer.permuted = False


@contextlib.contextmanager
def authors_restarts():
    """train.py's restarts followed by alternate_groupings, for the runs inside this block (train.train looks
    restart_adapters up in its module at every restart). A run resumed from a checkpoint would restart the grouping
    from interleaved: these runs are never resumed mid-way (pretraining.run trains an unfinished run again)."""
    original = train.restart_adapters

    def restart(model, optimizer, reset="drop"):
        original(model, optimizer, reset)
        alternate_groupings(model)
    train.restart_adapters = restart
    try:
        yield
    finally:
        train.restart_adapters = original


def authors_schedule(max_iters: int) -> list[str]:
    """train.py flags for the MoRA authors' pretraining schedule (see the docstring) scaled to max_iters steps."""
    cycle = max_iters // 5
    return ["--schedule", "cycle", "--warmup", str(max_iters // 10), "--merge_every", str(cycle),
            "--restart_warmup", str(max(1, cycle // 40)), "--min_lr_ratio", "0"]


def accumulated_rank(alternating: bool, features: int, r: int, restarts: int, seed: int = 0) -> list[int]:
    """The rank of W - W0 after each of `restarts` cycles of a features x features sharing layer at LoRA rank r, M
    random in each cycle, merged by train.restart_adapters (float64, singular values above 1e-9 of the largest)."""
    torch.manual_seed(seed)
    base = torch.nn.Linear(features, features, bias=False).double()
    layer = mora.MoRALinear(base, r, AlternatingShare if alternating else "share").double()
    w0, ranks, model = layer.base_weight.detach().clone(), [], torch.nn.ModuleDict({"layer": layer})
    optimizer = torch.optim.AdamW(layer.parameters())
    with authors_restarts() if alternating else contextlib.nullcontext():
        for _ in range(restarts):
            with torch.no_grad():
                layer.M.normal_()
            train.restart_adapters(model, optimizer)
            s = torch.linalg.svdvals(layer.base_weight.detach() - w0)
            ranks.append(int((s > 1e-9 * s[0]).sum()))
    return ranks


def mean_lr(config, method: str, start: int) -> float:
    """The mean of train.get_lr over steps start ... max_iters - 1 for this method."""
    config = argparse.Namespace(**{**vars(config), "method": method})
    return sum(train.get_lr(it, config) for it in range(start, config.max_iters)) / (config.max_iters - start)


def rate_ratio_table(train_flags: list[str]) -> list[str]:
    """How much more learning rate a restarted method gets than its base at the same --lr, under each schedule:
    ReLoRA's mean rate over LoRA's, over the run, its second half and its last cycle (arithmetic, no training)."""
    lines = ["| mean lr, ReLoRA / LoRA at one --lr | the run | its second half | its last cycle |", "|---|---|---|---|"]
    for schedule in ("cycle", "jagged"):
        config = train.parse_args(train_flags + ["--method", "relora", "--lr", "1", "--schedule", schedule])
        starts = (0, config.max_iters // 2, config.max_iters - config.merge_every)
        lines.append(f"| --schedule {schedule} | " + " | ".join(
            f"{mean_lr(config, 'relora', s) / mean_lr(config, 'lora', s):.2f}x" for s in starts) + " |")
    return lines + [""]


def rank_table(features: int, r: int, restarts: int) -> list[str]:
    r_hat = mora.r_hat_of(features, features, r)
    lines = [f"Rank of the accumulated update W - W0 of a {features}x{features} layer, sharing at r={r} (r^ = {r_hat}),"
             f" after k restarts (M random in each cycle):", "",
             "| ReMoRA | " + " | ".join(f"k={k}" for k in range(1, restarts + 1)) + " |", "|---" * (restarts + 1) + "|"]
    for name, alternating in (("random permutations (this project)", False), ("alternating groupings (authors)", True)):
        lines.append(f"| {name} | " + " | ".join(map(str, accumulated_rank(alternating, features, r, restarts))) + " |")
    return lines


def compare(root: str, configs: dict[str, tuple[str, float, list[str]]], pairs: list[tuple[str, str]],
            seeds: list[int]) -> list[str]:
    """Runs every config (label: method, rate, extra train.py flags) on every seed; a table of the final validation
    losses and of the paired differences a - b for each (a, b) in pairs."""
    losses = {}
    for label, (method, lr, flags) in configs.items():
        folder = os.path.join(root, label.replace(", ", "-").replace(" ", "-"))
        with authors_restarts() if AUTHORS_COMPRESSION in flags else contextlib.nullcontext():
            losses[label] = [final_loss(run(folder, method, lr, seed, flags)) for seed in seeds]
    lines = ["| run | lr | final val loss, mean ± std (min-max) |", "|---|---|---|"]
    lines += [f"| {label} | {configs[label][1]:g} | {spread_text(spread(v), nats)} |" for label, v in losses.items()]
    lines += ["", "| difference, paired by seed | mean | 95% interval | per seed |", "|---|---|---|---|"]
    for a, b in pairs:
        d = paired_difference(losses[a], losses[b])
        lines.append(f"| {a} - {b} | {d['mean']:.4f} | {interval_text(d, nats)} | "
                     f"{', '.join(f'{x:.4f}' for x in d['diffs'])} |")
    return lines


def part_configs(part: str, bases: list[str], rates: dict[str, float], authors: list[str],
                 frequencies: list[int]) -> tuple[dict[str, tuple[str, float, list[str]]], list[tuple[str, str]]]:
    """A part's runs (label: method, rate, train.py flags; the label names the run's folder, so a run two parts share
    runs once) and the pairs (a, b) whose difference a - b it reports. authors: the train.py flags with the authors'
    schedule; the base methods never merge, so they run the same under either schedule."""
    jagged, every = authors + ["--schedule", "jagged"], train.parse_args(authors + ["--method", "relora"]).merge_every
    if part == "remora":
        ways = {"random permutations": "share", "alternating groupings": AUTHORS_COMPRESSION}
        configs = {f"remora share, {way}, cycle every {every}": ("remora", rates["remora"], authors + ["--compress", c])
                   for way, c in ways.items()}
        return configs, [tuple(configs)]
    configs, pairs = {}, []
    for base in bases:
        twin = RESTARTED[base]
        tuned = f"{twin}, jagged every {every}"
        if part == "reset":  # tuned's twin, whose restarts drop Adam's state, is the reference
            reference, configs[tuned] = tuned, (twin, rates[twin], jagged)
        else:
            reference, configs[base] = base, (base, rates[twin] if part == "merge_every" else rates[base], authors)
        if part == "paper":  # one rate, the base method's
            twins = {f"{twin}, cycle every {every}": (twin, rates[base], authors)}
        elif part == "tuned":
            twins = {tuned: (twin, rates[twin], jagged)}
        elif part == "merge_every":  # the base method is the twin that never merges, at the twin's rate
            twins = {f"{twin}, jagged every {k}": (twin, rates[twin], jagged + ["--merge_every", str(k)])
                     for k in frequencies}
        else:  # reset: ReLoRA's, which prune Adam's moments and keep its step
            twins = {f"{tuned}, reset {reset}": (twin, rates[twin], jagged + ["--reset", reset])
                     for reset in ("random", "magnitude")}
        configs.update(twins)
        pairs += [(reference, label) for label in twins]
    return configs, pairs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--part", required=True, choices=("rank", "paper", "tuned", "merge_every", "remora", "reset"),
                        help="see above")
    parser.add_argument("--lrs", default="", help="one rate per method, 'lora=3e-3,mora=1e-2' (picked elsewhere)")
    parser.add_argument("--methods", default="lora,mora", help="all parts but rank and remora: base methods")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (rates were picked on another)")
    parser.add_argument("--frequencies", help="--part merge_every: merge every N steps; default max_iters/10, /5, /2")
    parser.add_argument("--restarts", type=train.numeric(int, positive=True), default=6, help="--part rank: cycles")
    parser.add_argument("--tag", default="restarts", help="name of this sweep, its folder under out/compare/")
    args, train_flags = parser.parse_known_args(argv)
    for method in RESTARTED.values():  # a bad train.py flag ends here, before any run (remora's config is kept)
        config = train.parse_args(flags_for(method, train_flags) + ["--method", method])
    if args.part == "rank":
        lines = rank_table(config.n_embd, config.rank, args.restarts)
        print("\n".join(lines))
        return {"tables": lines}
    seeds = [int(s) for s in args.seeds.split(",")]
    bases = args.methods.split(",")
    if set(bases) - set(RESTARTED):
        raise train.UserError(f"--methods {args.methods}: choose from {list(RESTARTED)}, comma-separated")
    if any(f.split("=")[0] in AUTHORS_FLAGS for f in train_flags):
        raise train.UserError(f"--part {args.part} sets {', '.join(AUTHORS_FLAGS)} from --max_iters (the authors' "
                              f"schedule): leave them out")
    twins = [RESTARTED[b] for b in bases]
    needs = {"paper": bases, "tuned": bases + twins, "remora": ["remora"], "merge_every": twins,
             "reset": twins}[args.part]
    rates = {}
    for m, grid in parse_grid(args.lrs, needs).items():
        if len(grid) > 1:
            raise train.UserError(f"--lrs {args.lrs} gives {m} {len(grid)} rates; give one (pick it on a tuning seed "
                                  f"with experiments/pretraining.py)")
        rates[m] = grid[0]
    n = config.max_iters
    try:
        frequencies = [int(k) for k in args.frequencies.split(",")] if args.frequencies else [n // 10, n // 5, n // 2]
    except ValueError:
        raise train.UserError(f"--frequencies {args.frequencies}: write step counts, as 100,200,500") from None
    authors = train_flags + authors_schedule(n)
    configs, pairs = part_configs(args.part, bases, rates, authors, frequencies)
    root = os.path.join("out", "compare", args.tag)
    lines = compare(root, configs, pairs, seeds)
    if args.part == "paper":
        lines = rate_ratio_table(authors) + lines
    print("\n".join(lines))
    write_json(os.path.join(root, f"{args.part}.json"),
               {"part": args.part, "train_flags": train_flags, "seeds": seeds, "tables": lines})
    return {"tables": lines}


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: train.py builds --compress
    # experiments.restarts:AlternatingShare from the imported one, and alternate_groupings must test that same class.
    from experiments import restarts
    run_main(restarts.main, "experiments/restarts.py")
