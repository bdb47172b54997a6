"""
Train a GPT with full training, LoRA, MoRA, ReLoRA or ReMoRA: one loop for all five methods, and its data.

    python train.py --method mora                          # laptop CPU, bundled corpus, about 3 minutes
    python train.py --method lora                          # LoRA at the same trainable-parameter budget (--rank 8)
    python train.py --method remora --merge_every 100      # ReMoRA: merge + restart the adapters every 100 steps
    python train.py --method mora --init_from resume       # continue out/mora after an interruption
    python train.py --method mora --init_from out/full/ckpt.pt --data facts.txt   # fine-tune: a text, or a folder
    python train.py --method mora --compress my_file:MyCompression               # a compression of your own
    python train.py --method mora --init_from gpt2 --data input.txt --lr 1e-3    # GPT-2 weights (downloads once)
    torchrun --standalone --nproc_per_node=8 train.py --method remora ...         # several GPUs, or CPU processes

Pretraining (§5.3) trains adapters over frozen random weights, and embeddings, norms, head; fine-tuning, adapters only.
"""

import argparse
import gc
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import tiktoken
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import mora
from model import GPT, PRETRAINED, GPTConfig, setup_device

METHODS = ("full", "lora", "mora", "relora", "remora")
RESTART_METHODS = ("relora", "remora")
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "tokenizer")  # from scratch
ONLY_FOR = {"rank": METHODS[1:], "targets": METHODS[1:], "alpha": ("lora", "relora"), "compress": ("mora", "remora"),
            **dict.fromkeys(("merge_every", "restart_warmup", "schedule", "reset"), RESTART_METHODS)}  # else refused


class UserError(Exception):
    """A mistake in the flags, data or files: one line (exit code 2), not a traceback."""


# --- Data: tokenizer, corpus, batches
ENCODINGS = {"bytes": lambda: tiktoken.Encoding(  # 256 bytes + <|endoftext|>: nothing to download; add yours here
    name="bytes", pat_str=r"(?s).{1,256}", mergeable_ranks={bytes([i]): i for i in range(256)},
    special_tokens={"<|endoftext|>": 256})}


def get_tokenizer(name: str) -> tiktoken.Encoding:
    """An encoding of ENCODINGS, or a tiktoken encoding name ("gpt2", "cl100k_base": downloads once)."""
    if name in ENCODINGS:
        return ENCODINGS[name]()
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # unknown name, or the vocabulary cannot be downloaded
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"  # one line, however long the error
        raise UserError(f"cannot load tiktoken encoding {name!r} ({reason}); tiktoken downloads it once, so run once "
                        f"online, or use the offline default --tokenizer bytes") from None


def load_corpus(path: str) -> str:
    """The text of `path`, or of the Python documentation that ships inside every CPython (~465 KB of English)."""
    if path == "pydoc":
        from pydoc_data.topics import topics
        return "\n\n".join(topics[key] for key in sorted(topics))
    if not os.path.isfile(path):
        raise UserError(f"--data {path}: no such file")
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--data {path}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t utf-8") from None
    if not text.strip():
        raise UserError(f"--data {path}: the file is empty")
    return text


def prepare(args) -> dict[str, np.ndarray]:
    """Token ids, train and val: a folder's train.txt and val.txt (split beforehand), or one text and its last tenth."""
    enc = get_tokenizer(args.tokenizer)
    encode = lambda text: np.array(enc.encode_ordinary(text), np.uint16 if enc.n_vocab <= 2**16 else np.uint32)
    if os.path.isdir(args.data):  # by document, say (experiments/corpus.py: one file in one half only)
        splits = {split: encode(load_corpus(os.path.join(args.data, f"{split}.txt"))) for split in ("train", "val")}
    else:
        ids = encode(load_corpus(args.data))
        splits = dict(zip(("train", "val"), np.split(ids, [len(ids) - len(ids) // 10])))
    for split, part in splits.items():
        if len(part) < args.block_size + 2:
            raise UserError(f"--data {args.data}: the {split} split has {len(part)} tokens; a batch needs --block_size "
                            f"+ 2 = {args.block_size + 2}; use a smaller --block_size or a larger corpus")
    return splits


def get_batch(ids: np.ndarray, args, generator, device, rank=0, world=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the corpus: inputs x and next-token targets y, (B, T) each."""
    starts = torch.randint(len(ids) - args.block_size - 1, (args.batch_size * world,), generator=generator)
    starts = starts[rank * args.batch_size:(rank + 1) * args.batch_size]  # one draw for all: one state resumes all
    windows = torch.from_numpy(np.stack([ids[i:i + args.block_size + 1] for i in starts.tolist()]).astype(np.int64))
    x, y = windows[:, :-1], windows[:, 1:]  # y is x shifted by one token
    pin = device.type == "cuda"  # pinned memory lets the copy overlap with the GPU's work
    return tuple((t.pin_memory() if pin else t).to(device, non_blocking=pin) for t in (x, y))


# --- Flags: every setting of a run, printed and saved in its checkpoint
def numeric(kind, positive: bool = False):  # an argparse type; an int may be written 5e3, as nanoGPT's cannot
    def parse(text: str):
        if kind is int and not float(text).is_integer() or positive and float(text) <= 0:
            raise argparse.ArgumentTypeError(f"expected a{' positive' if positive else 'n'} {kind.__name__}: {text!r}")
        return kind(float(text))
    return parse


def compression(spec: str):
    """--compress: a name in mora.COMPRESSIONS, or module:Class, importable from where you run: a fork's own."""
    if spec in mora.COMPRESSIONS:
        return spec
    try:
        module, _, name = spec.partition(":")
        sys.path[:0] = [] if os.getcwd() in sys.path else [os.getcwd()]  # python train.py puts only its own folder
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"--compress {spec}: neither one of {list(mora.COMPRESSIONS)} nor an importable module:Class "
                        f"({type(e).__name__}: {e})") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    count, integer, number = numeric(int, positive=True), numeric(int), numeric(float, positive=True)
    p.add_argument("--n_layer", type=count, default=4, help="transformer blocks")
    p.add_argument("--n_head", type=count, default=4, help="attention heads per block")
    p.add_argument("--n_embd", type=count, default=128, help="model width")
    p.add_argument("--block_size", type=count, help="context length; default 128 from scratch, else the model's")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout probability (0 for pretraining)")
    p.add_argument("--data", default="pydoc", help="a UTF-8 text, a folder of train.txt, val.txt, or pydoc (CPython's)")
    p.add_argument("--tokenizer", default="bytes", help="bytes, or a tiktoken name: gpt2 (downloads once), ...")
    p.add_argument("--method", default="mora", choices=METHODS, help="what trains")
    p.add_argument("--rank", type=count, default=8, help="LoRA rank r; MoRA gets its budget: r^ = sqrt((in+out) r)")
    p.add_argument("--compress", default="auto", help="MoRA: auto (rotate, share from rank 128), a name, module:Class")
    p.add_argument("--targets", default="query,key,value,output,up,down", help="names of the linear layers to adapt")
    p.add_argument("--alpha", type=number, help="LoRA alpha (scaling alpha/r); default 2*rank")
    p.add_argument("--merge_every", type=count, default=150, help="ReLoRA/ReMoRA: merge and restart every N steps")
    p.add_argument("--restart_warmup", type=integer, default=10, help="ReLoRA/ReMoRA: lr re-warmup steps after each")
    p.add_argument("--schedule", default="jagged", choices=("jagged", "cycle"), help="one cosine, or one per restart")
    p.add_argument("--reset", default="drop", choices=("drop", "random", "magnitude"), help="drop/prune Adam's moments")
    p.add_argument("--batch_size", type=count, default=32, help="sequences per micro-batch, per process")
    p.add_argument("--grad_accum", type=count, default=1, help="micro-batches per optimizer step, per process")
    p.add_argument("--lr", type=number, default=1e-2, help="peak learning rate")
    p.add_argument("--min_lr_ratio", type=float, default=0.1, help="the cosine decays to lr * min_lr_ratio")
    p.add_argument("--warmup", type=integer, default=50, help="steps of linear lr warmup")
    p.add_argument("--max_iters", type=count, default=600, help="optimizer steps")
    p.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay on weight matrices only")
    p.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    p.add_argument("--eval_interval", type=count, default=100, help="evaluate and checkpoint every N steps")
    p.add_argument("--eval_iters", type=count, default=20, help="batches per evaluation")
    p.add_argument("--log_interval", type=count, default=50, help="print a training line every N steps")
    p.add_argument("--out_dir", help="where ckpt.pt and metrics.jsonl go; default out/<method>")
    p.add_argument("--init_from", default="scratch", help="scratch, resume, gpt2 (or a HF folder), a full ckpt.pt")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), or cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="auto: bf16 if supported")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    p.add_argument("--seed", type=integer, default=1337, help="random seed")
    args = p.parse_args(argv)
    for flag in (k for k in ONLY_FOR if args.method not in ONLY_FOR[k] and getattr(args, k) != p.get_default(k)):
        p.error(f"--{flag} does nothing with --method {args.method} (only with {'/'.join(ONLY_FOR[flag])})")
    if args.n_embd % args.n_head:
        p.error(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    args.compress = ("share" if args.rank >= 128 else "rotate") if args.compress == "auto" else args.compress
    args.out_dir = args.out_dir or os.path.join("out", args.method)
    args.block_size = args.block_size or (GPTConfig.block_size if args.init_from == "scratch" else None)
    args.vocab_size = get_tokenizer(args.tokenizer).n_vocab if args.init_from == "scratch" else None
    return args


# --- The model: from scratch, from pretrained weights, or from a checkpoint; then adapted
def adapt(model: GPT, args, pretraining: bool) -> GPT:
    """Give `model` the adapters of args.method; for pretraining, keep embeddings, norms and head trainable."""
    if args.method == "full":
        return model
    lora, targets = args.method in ("lora", "relora"), [t.strip() for t in args.targets.split(",")]
    kwargs = {"alpha": args.alpha} if lora else {"compress": compression(args.compress)}
    try:
        mora.add_adapters(model, "lora" if lora else "mora", args.rank, targets, **kwargs)
    except ValueError as e:
        raise UserError(f"--targets {args.targets}: {e}") from None
    if pretraining:  # the head is tied to wte, so it trains with it
        for name, p in model.named_parameters():
            p.requires_grad_(p.requires_grad or name.startswith(("wte.", "wpe.", "ln_f.")) or ".ln_" in name)
    return model


def build_model(args) -> tuple[GPT, dict | None]:
    """The model of args and, on --init_from resume, the checkpoint to continue from. The architecture comes from the
    pretrained model or the checkpoint when there is one, and goes into args, so that it is saved with the flags."""
    checkpoint = load_checkpoint(os.path.join(args.out_dir, "ckpt.pt")) if args.init_from == "resume" else None
    if checkpoint:
        saved = checkpoint["config"]
        args.init_from, args.block_size = saved["init_from"], args.block_size or saved["block_size"]
        keys = ("method", *ONLY_FOR, *(MODEL_FLAGS if args.init_from == "scratch" else ()))  # else: the model's own
        mismatch = [f"--{k} {saved[k]} (this run: {getattr(args, k)})" for k in keys if saved[k] != getattr(args, k)]
        if mismatch:
            raise UserError(f"{args.out_dir}/ckpt.pt was trained with {', '.join(mismatch)}; pass the same flags")
        model, args.tokenizer = GPT(GPTConfig.of(saved)), saved["tokenizer"]
    elif args.init_from == "scratch":
        model = GPT(GPTConfig.of(vars(args)))
    else:
        model, args.tokenizer = load_pretrained(args.init_from, args.dropout)
        try:
            model.crop_block_size(args.block_size or model.config.block_size)
        except ValueError as e:
            raise UserError(f"--block_size {args.block_size}: {e}") from None
    vars(args).update(vars(model.config))
    model = adapt(model, args, pretraining=args.init_from == "scratch")
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    return model, checkpoint


def load_pretrained(source: str, dropout: float, flag: str = "--init_from") -> tuple[GPT, str]:
    """(model, its tokenizer) from GPT-2 weights (a PRETRAINED name, a HuggingFace folder) or a full train.py ckpt."""
    if source in PRETRAINED or os.path.isdir(source):
        try:
            return GPT.from_pretrained(source, dropout), "gpt2"
        except (ImportError, OSError, ValueError) as e:
            raise UserError(f"{flag} {source}: {e}") from None
    checkpoint = load_checkpoint(source)
    if checkpoint["config"]["method"] != "full":
        raise UserError(f"{flag} {source}: a {checkpoint['config']['method']} run's; start from a full one")
    model = GPT(GPTConfig.of(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint["config"]["tokenizer"]


# --- Training: the schedule, one optimizer step, restarts, evaluation, checkpoints; the run: setup, loop, summary
def cosine(step: int, steps: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup to peak over `warmup` steps, then half a cosine from peak down to floor at `steps`."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def get_lr(it: int, args) -> float:
    """Warmup, then cosine decay to lr * min_lr_ratio. ReLoRA/ReMoRA re-warm after every restart (fresh adapters start
    from zero): --schedule jagged within one cosine (ReLoRA's), or cycle: new cosines from the rate reached (MoRA's)."""
    floor, start, peak, warmup = args.lr * args.min_lr_ratio, 0, args.lr, args.warmup
    restarts = range(args.merge_every, it + 1, args.merge_every) if args.method in RESTART_METHODS else ()
    for restart in restarts if args.schedule == "cycle" else ():  # cycle k starts at the rate cycle k - 1 reached
        peak = cosine(restart - 1 - start, args.max_iters - start, warmup, peak, floor)
        start, warmup = restart, args.restart_warmup
    lr = cosine(it - start, args.max_iters - start, warmup, peak, floor)
    jagged = args.schedule == "jagged" and restarts
    return lr * min(1.0, (it - restarts[-1] + 1) / (args.restart_warmup + 1)) if jagged else lr


def train_step(model, optimizer, micro_batches: list, ctx, lr: float, grad_clip: float) -> torch.Tensor:
    """One optimizer step, the only one in this project (memorize_uuid.py and the benchmark call it too): forward
    under autocast and backward for each (x, y) micro-batch, clip, step. Returns the mean loss as a tensor (no sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        if isinstance(model, DDP):  # all-reduce the gradients once, after the last micro-batch, not after each
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        with ctx:
            _, loss = model(x, y)
        loss = loss / len(micro_batches)  # gradients add up over micro-batches: this makes them the batch's mean
        total += loss.detach()
        loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def restart_adapters(model: GPT, optimizer: torch.optim.Optimizer, reset: str = "drop") -> None:
    """ReLoRA / ReMoRA: merge every adapter into W0 (which starts a fresh one) and reset its Adam state, whose moments
    belong to the old adapter's directions, now in W0: drop it, step count too (the MoRA authors), or keep the step and
    prune each moment (ReLoRA): zero all but a random 0.1% of its entries, or all but its largest 10% in magnitude."""
    for layer in mora.adapter_layers(model).values():
        layer.merge()
        for p in layer.parameters():
            state = optimizer.state.pop(p, {}) if reset == "drop" else optimizer.state.get(p, {})  # AdamW's, if any
            for moment in [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state and reset != "drop"]:
                size = moment.abs()
                moment.mul_(torch.rand_like(moment) > 0.999 if reset == "random" else size > size.quantile(0.9))


@torch.no_grad()
def evaluate(model, ids: np.ndarray, args, device, ctx) -> float:
    """The mean loss over eval_iters batches from a fixed seed: every evaluation, and every method, sees the same."""
    model.eval()
    generator, total = torch.Generator().manual_seed(args.seed + 999), 0.0
    for _ in range(args.eval_iters):
        with ctx:
            total += model(*get_batch(ids, args, generator, device))[1].item()
    model.train()
    return total / args.eval_iters


def save_checkpoint(path: str, checkpoint: dict) -> None:
    # Write, then rename: the rename is atomic, so Ctrl-C or a full disk mid-save leaves the last checkpoint whole.
    try:
        torch.save(checkpoint, path + ".tmp")
        os.replace(path + ".tmp", path)
    finally:
        Path(path + ".tmp").unlink(missing_ok=True)  # after a failed save: no half-written file left behind


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read, it is corrupt or truncated ({type(e).__name__}); "
                        f"delete it or start over with --init_from scratch") from None


def setup(args) -> SimpleNamespace:
    """Everything a run needs, on every process: torchrun starts one per GPU (nccl) or per CPU worker (gloo)."""
    run = SimpleNamespace(ddp="RANK" in os.environ, rank=0, world=1, device=args.device)
    if run.ddp:
        cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        run.rank, run.world = dist.get_rank(), dist.get_world_size()
        if cuda:
            run.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(run.device)
    run.device, run.ctx, run.dtype = setup_device(run.device, args.dtype)
    torch.manual_seed(args.seed)  # the same on every process: restarts draw the same fresh adapters on each
    run.raw_model, checkpoint = build_model(args)  # what is saved and restarted: compile and DDP wrap it below
    run.iter_num, run.best_val = (checkpoint["iter_num"], checkpoint["best_val_loss"]) if checkpoint else (0, math.inf)
    run.metrics = os.path.join(args.out_dir, "metrics.jsonl")
    try:  # a resumed run keeps what was logged before its checkpoint, and only that: it reads as if never stopped
        if run.rank == 0:
            os.makedirs(args.out_dir, exist_ok=True)
            old = open(run.metrics).readlines() if run.iter_num and os.path.exists(run.metrics) else []
            with open(run.metrics + ".tmp", "w") as f:
                f.writelines(line for line in old if json.loads(line).get("iter", -1) < run.iter_num)
            os.replace(run.metrics + ".tmp", run.metrics)
    except OSError as e:
        raise UserError(f"cannot write to --out_dir {args.out_dir} ({e.strerror}); pick another") from None
    run.data = prepare(args)
    run.model = run.raw_model.to(run.device)
    run.optimizer = run.model.configure_optimizers(args.weight_decay, args.lr, (0.9, args.beta2), run.device.type)
    run.batch_order = torch.Generator().manual_seed(args.seed)  # its own: dropout cannot shift it
    if checkpoint:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])  # the next restart must draw what it would have drawn
        run.batch_order.set_state(checkpoint["rng"]["batches"])
    if args.compile:  # its parameters are named "_orig_mod.*": save raw_model, never this one
        run.model = torch.compile(run.model)
    if run.ddp:  # no broadcast of buffers before each forward: the adapters' are equal on every rank, seeded alike
        run.model = DDP(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                        broadcast_buffers=False)
    return run


def log(run, text: str, **entry) -> None:  # print text, append entry to metrics.jsonl: on rank 0 only
    if run.rank == 0:
        print(text)
        with open(run.metrics, "a") as f:
            f.write(json.dumps(entry) + "\n")


def train(run, args) -> tuple[float, int | None]:
    """The loop, from run.iter_num to --max_iters: returns the last validation loss and the step it diverged at."""
    t_last, since_log, loss_sum, val_loss = time.time(), 0, 0.0, math.nan
    restarts = range(args.merge_every, args.max_iters, args.merge_every) if args.method in RESTART_METHODS else ()
    while True:
        if run.iter_num % args.eval_interval == 0 or run.iter_num == args.max_iters:
            val_loss = evaluate(run.model, run.data["val"], args, run.device, run.ctx)
            run.best_val = min(run.best_val, val_loss)
            log(run, f"step {run.iter_num}: val loss {val_loss:.4f}", kind="eval", iter=run.iter_num, val_loss=val_loss)
            if run.iter_num > 0 and run.rank == 0:
                save_checkpoint(os.path.join(args.out_dir, "ckpt.pt"), {
                    "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(), "config": vars(args),
                    "iter_num": run.iter_num, "best_val_loss": run.best_val,
                    "rng": {"torch": torch.get_rng_state(), "batches": run.batch_order.get_state()}})
            t_last = time.time()  # evaluation and saving stay out of ms/iter
        if run.iter_num >= args.max_iters:
            return val_loss, None

        lr = get_lr(run.iter_num, args)
        batches = [get_batch(run.data["train"], args, run.batch_order, run.device, run.rank, run.world)
                   for _ in range(args.grad_accum)]
        loss_sum += train_step(run.model, run.optimizer, batches, run.ctx, lr, args.grad_clip)
        since_log, run.iter_num = since_log + 1, run.iter_num + 1
        at_log = run.iter_num % args.log_interval == 0 or run.iter_num == args.max_iters
        if at_log:  # float() waits for the GPU: only here, not at every step
            loss, dt = float(loss_sum) / since_log, (time.time() - t_last) / since_log
            log(run, f"iter {run.iter_num - 1}: loss {loss:.4f}, lr {lr:.1e}, {dt * 1000:.0f} ms/iter, eta "
                     f"{dt * (args.max_iters - run.iter_num) / 60:.1f} min", kind="train", iter=run.iter_num - 1,
                loss=loss, lr=lr, ms_per_iter=dt * 1000)
            t_last, since_log, loss_sum = time.time(), 0, 0.0
        restart = run.iter_num in restarts
        # A diverged run stops before a restart could merge nan into W0 for good (every rank alike: equal weights).
        if (at_log or restart) and not all(p.isfinite().all() for p in run.raw_model.parameters()):
            log(run, f"iter {run.iter_num}: the weights are no longer finite: training diverged (lower --lr)",
                kind="diverged", iter=run.iter_num)
            return math.nan, run.iter_num
        if restart:
            restart_adapters(run.raw_model, run.optimizer, args.reset)
            log(run, f"iter {run.iter_num}: merged and restarted the adapters", kind="restart", iter=run.iter_num)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run = setup(args)
    n_trainable, n_total = mora.count_trainable(run.raw_model), run.raw_model.num_params()
    log(run, f"config: {json.dumps(vars(args))}", kind="config", **vars(args))
    log(run, f"device {run.device}, dtype {run.dtype}, {run.world} process(es), {n_trainable:,} trainable of "
             f"{n_total:,} parameters" + (f", resuming at iter {run.iter_num}" if run.iter_num else ""), kind="setup")
    t_start = time.time()
    val_loss, diverged_at = train(run, args)  # Ctrl-C leaves the last checkpoint whole: --init_from resume goes on
    val_per_rank = [val_loss] * run.world
    if run.ddp:
        dist.all_gather_object(val_per_rank, val_loss)
        # DDP holds the group in reference cycles; freed at exit, gloo aborts ("terminate called without an active ...")
        run.model = None
        gc.collect()
        dist.destroy_process_group()
    summary = {"method": args.method, "trainable_params": n_trainable, "total_params": n_total,
               "best_val_loss": run.best_val, "final_val_loss": val_loss, "val_loss_per_rank": val_per_rank,
               "diverged_at": diverged_at, "wall_time_s": time.time() - t_start}
    log(run, f"done: method {args.method}, {n_trainable:,} trainable parameters, final val loss {val_loss:.4f} "
             f"(best {run.best_val:.4f}), {summary['wall_time_s'] / 60:.1f} min", kind="summary", **summary)
    return summary


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
