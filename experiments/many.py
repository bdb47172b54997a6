"""
Many UUID runs at once (issue 28): memorize_uuid.finetune's runs trained together, in two ways that compose.

    python -m experiments.many                                        # steps/s on this CPU: alone, then 2 workers
    python -m experiments.many --device cuda --runs 32 --workers 4    # one GPU: 4 processes of 32 batched runs each

Batched, in one process (finetune_batched): K runs of one structure (method, rank, compression, LoRA's alpha; the same
steps, batch size and checkpoints) that differ in seed (their pairs, initialization and batch order) and rate, the way
torch.func ensembles models. Their trainable tensors are stacked, (K, ...); the frozen base is shared; one vmapped
forward and backward gives every run its own loss and gradient; each run clips its own gradient and keeps its own
AdamW moments, at its own rate. A run of the d=144 base leaves a GPU idle (bound by kernel launches), so K runs cost
about one there; on a CPU a step is bound by arithmetic, and batching gains nothing.

Across processes (train_jobs): W workers (spawned, one thread each) train the runs they are handed, batched or one by
one, into the run cache (experiments.memorize.run_key's files), the join point from which a sweep reads every run. On
the 2-core CPU, two workers. A batched run equals its finetune() run to float rounding (tests/test_experiments_many.py)
and is cached apart from it all the same (the engine is part of a run's key); memorize.cached_run reads either.
"""

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

import memorize_uuid
import train
from model import setup_device
from experiments import memorize
from experiments.harness import run_main, write_json

BETAS, EPS = (0.9, 0.99), 1e-8  # memorize_uuid.finetune's AdamW (GPT.configure_optimizers), without weight decay


def stacked(models: list) -> dict[str, torch.Tensor]:
    """Each run's trainable tensors, stacked: {name: (K, ...)}, in the models' parameter order."""
    tensors = [dict(model.named_parameters()) for model in models]
    return {name: torch.stack([t[name].detach() for t in tensors]) for name, p in models[0].named_parameters()
            if p.requires_grad}


@torch.no_grad()
def unstack_into(models: list, params: dict[str, torch.Tensor]) -> None:
    for k, model in enumerate(models):
        own = dict(model.named_parameters())
        for name, tensor in params.items():
            own[name].copy_(tensor[k])


def per_run(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:  # (K,) -> (K, 1, ..., 1), to broadcast
    return values.view(-1, *[1] * (like.dim() - 1))


@torch.no_grad()
def clip_(grads: dict[str, torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ for each run: its gradient's total norm over every tensor, scaled to max_norm."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()])  # (tensors, K)
    scale = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)  # (K,)
    for g in grads.values():
        g.mul_(per_run(scale, g))


@torch.no_grad()
def adamw_(params: dict, grads: dict, moments: dict, step: int, lrs: list[float]) -> None:
    """torch.optim.AdamW's update (weight decay 0), for K runs at their own rates: the operations of torch's
    single-tensor implementation, in its order (its addcdiv computes (value * m) / denom), step sizes in double."""
    bias1, bias2 = 1 - BETAS[0] ** step, 1 - BETAS[1] ** step
    for name, p in params.items():
        m, v, g = *moments[name], grads[name]
        m.lerp_(g, 1 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        denom = (v.sqrt() / bias2 ** 0.5).add_(EPS)
        value = torch.tensor([-lr / bias1 for lr in lrs], dtype=p.dtype, device=p.device)  # AdamW's -step_size
        p.add_(per_run(value, p) * m / denom)


def finetune_batched(base: dict, runs: list[dict], method: str, rank: int, args, device, ctx) -> list[dict]:
    """K runs of memorize_uuid.finetune(base, run["examples"], method, rank, run["lr"], run["seed"], args, ...)
    trained together; runs: [{"examples", "lr", "seed"}], their pairs of one shape. Returns finetune's K records."""
    for run in runs:
        memorize_uuid.check_fits(base, run["examples"])
    starts = [memorize_uuid.start(base, method, rank, run["lr"], run["seed"], args, device) for run in runs]
    models, configs = [model for model, _ in starts], [config for _, config in starts]
    params = stacked(models)
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in params.items()}
    rows = torch.stack([memorize_uuid.batch_order(len(run["examples"]["values"]), args.batch_size, args.steps,
                                                  run["seed"]) for run in runs]).to(device)  # (K, steps, B)
    sequences = torch.stack([run["examples"]["sequences"] for run in runs]).to(device)  # (K, N, L)
    targets = torch.stack([run["examples"]["targets"] for run in runs]).to(device)  # (K, N, L - 1)
    each = torch.arange(len(runs), device=device)[:, None]

    def loss_of(own: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # one run: the first model's modules,
        with ctx, sdpa_kernel(SDPBackend.MATH):  # computing with that run's tensors (the frozen ones are the same in
            return functional_call(models[0], own, (x, y))[1]  # every model); vmap batches math attention over runs,
    # where for a fused kernel (flash, on the CPU) it has no batching rule and loops over them one by one
    step_all = vmap(grad_and_value(loss_of))  # (K, ...) tensors, (K, B, L - 1) batches -> gradients, (K,) losses

    curves, t0, losses = [[] for _ in runs], time.time(), None
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            unstack_into(models, params)
            for k, (model, run) in enumerate(zip(models, runs)):
                char_acc, exact = memorize_uuid.evaluate(model, run["examples"], ctx)
                curves[k].append({"step": step, "char_acc": char_acc, "exact_match": exact,
                                  "loss": None if losses is None else float(losses[k])})
            accuracy = [curve[-1]["char_acc"] for curve in curves]
            print(f"{len(runs)} runs of {method} r={rank}: step {step}/{args.steps}, char acc "
                  f"{100 * min(accuracy):.1f}-{100 * max(accuracy):.1f}%, {time.time() - t0:.0f} s", flush=True)
        if step == args.steps:
            break
        idx = rows[:, step]  # (K, B): each run's own batch
        grads, losses = step_all(params, sequences[each, idx, :-1], targets[each, idx])
        clip_(grads, configs[0].grad_clip)
        adamw_(params, grads, moments, step + 1, [train.get_lr(step, config) for config in configs])
    unstack_into(models, params)
    return [memorize_uuid.record(model, base, run["examples"], config, curve, t0)
            for model, run, config, curve in zip(models, runs, configs, curves)]


def train_job(job: dict) -> int:
    """One job: runs of one structure (method, rank; LoRA's alpha_r and the compression in job["args"], whose base
    is a checkpoint's path: this process pretrains nothing) at (lr, seed)
    pairs, each trained unless in the run cache already (from either engine), batched when job["batched"], and cached;
    with job["measure"], every run trains and nothing is cached (a timing). Returns how many it trained."""
    args = argparse.Namespace(**job["args"])
    device, ctx, _ = setup_device(args.device, args.dtype)
    base = memorize.load_base(args.base, job["preset"])
    method, rank, engine = job["method"], job["rank"], "batched" if job["batched"] else "finetune"
    todo = [{"lr": lr, "seed": seed} for lr, seed in job["runs"]
            if job["measure"] or memorize.cached_result(base, method, rank, lr, seed, args, device) is None]
    for run in todo:
        run["path"], run["settings"], run["examples"] = memorize.run_key(base, method, rank, run["lr"], run["seed"],
                                                                         args, device, engine)
    if job["batched"]:
        records = finetune_batched(base, todo, method, rank, args, device, ctx) if todo else []
    else:
        label = lambda run: f"{method} r={rank} lr={run['lr']:g} seed {run['seed']}"
        records = [memorize_uuid.finetune(base, run["examples"], method, rank, run["lr"], run["seed"], args, device,
                                          ctx, label(run)) for run in todo]
    for run, record in zip(todo, records if not job["measure"] else []):
        write_json(run["path"], {"settings": run["settings"], "run": record})
    return len(todo)


def train_jobs(jobs: list[dict], workers: int, threads: int = 1) -> int:
    """Every job, in `workers` spawned processes of `threads` threads each (in this one when workers is 1), the run
    cache the join point. Returns how many runs were trained."""
    if workers == 1:
        return sum(map(train_job, jobs))
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool or CUDA state inherited
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        return sum(pool.map(train_job, jobs))


def jobs_for(plan: list[dict], preset: str, batch: int, measure: bool = False) -> list[dict]:
    """plan: one dict per run ({"args": its flags, a Namespace; "method", "rank", "lr", "seed"}) -> jobs of runs that
    share their flags, method and rank (one structure), at most `batch` of them batched (1: finetune's engine, one by
    one); measure: every run trains and none is cached."""
    groups = {}
    for run in plan:
        key = (json.dumps(vars(run["args"]), sort_keys=True), run["method"], run["rank"])
        groups.setdefault(key, []).append((run["lr"], run["seed"]))
    return [{"preset": preset, "args": json.loads(flags), "method": method, "rank": rank, "batched": batch > 1,
             "measure": measure, "runs": runs[i:i + batch]}
            for (flags, method, rank), runs in groups.items() for i in range(0, len(runs), batch)]


def throughput(args) -> list[str]:
    """Aggregate fine-tuning steps per second on the UUID base, checkpoints aside: one run alone (finetune, this
    process's threads), then --workers processes of --runs batched runs each (or one by one, with --runs 1)."""
    flags = argparse.Namespace(**{**vars(args), "eval_every": args.steps})  # evaluate at the start and the end only
    base = memorize.load_base(args.base, "cpu")
    flags.base = base["source"]  # the workers load this checkpoint
    device, ctx, _ = setup_device(args.device, args.dtype)
    examples = memorize_uuid.encode(memorize_uuid.make_pairs(args.pairs, 0), train.get_tokenizer(base["tokenizer"]))
    t0 = time.time()
    memorize_uuid.finetune(base, examples, "mora", 8, 2e-2, 0, flags, device, ctx, "alone")
    alone = args.steps / (time.time() - t0)
    plan = [{"args": flags, "method": "mora", "rank": 8, "lr": 2e-2, "seed": 1000 + i}  # seeds never reported
            for i in range(args.workers * args.runs)]
    jobs = jobs_for(plan, "cpu", args.runs, measure=True)
    t0 = time.time()
    trained = train_jobs(jobs, args.workers, args.threads)
    together = trained * args.steps / (time.time() - t0)
    return [f"UUID base, MoRA r=8, {args.steps} steps a run of batch {args.batch_size}, device {device}, "
            f"{torch.get_num_threads()} thread(s) alone:", "",
            "| how | runs | steps/s, all runs together | against one run alone |", "|---|---|---|---|",
            f"| one run alone | 1 | {alone:.1f} | 1.00 |",
            f"| {args.workers} process(es) x {args.runs} run(s) {'batched' if args.runs > 1 else 'one by one'}, "
            f"{args.threads} thread(s) each | {trained} | {together:.1f} | {together / alone:.2f} |"]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    memorize_uuid.add_flags(parser)
    count = train.numeric(int, positive=True)
    parser.add_argument("--workers", type=count, default=2, help="processes (the CPU's cores; a GPU's: several)")
    parser.add_argument("--runs", type=count, default=1, help="runs batched in each process (1: one by one)")
    parser.add_argument("--threads", type=count, default=1, help="threads in each worker process")
    parser.set_defaults(steps=300)
    args = parser.parse_args(argv)
    lines = throughput(args)
    print("\n".join([""] + lines))
    return lines


if __name__ == "__main__":
    run_main(main, "experiments/many.py")
