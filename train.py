"""
Train a GPT with full training, LoRA, MoRA, ReLoRA or ReMoRA: one loop for all five methods.

    python train.py --method mora                          # laptop CPU, bundled corpus, about 3 minutes
    python train.py --method lora --rank 8                 # LoRA at the same trainable-parameter budget
    python train.py --method remora --merge_every 100      # ReMoRA: merge + restart the adapters every 100 steps
    python train.py --method mora --init_from resume       # continue out/mora after an interruption
    python train.py --method full --data input.txt         # any UTF-8 text file
    python train.py --method mora --init_from out/full/ckpt.pt --data facts.txt   # fine-tune a pretrained model

One CUDA GPU: fine-tune OpenAI's GPT-2 (downloaded once by transformers; tokenizer gpt2, downloaded once by
tiktoken), or pretrain a GPT-2-small-sized model at the paper's rank ratio (r=128 on d=768):
    python train.py --method mora --init_from gpt2 --data input.txt --batch_size 8 --lr 1e-3 --max_iters 2000
    python train.py --method remora --n_layer 12 --n_head 12 --n_embd 768 --block_size 512 --batch_size 32 \\
        --rank 128 --lr 2e-3 --warmup 500 --max_iters 10000 --merge_every 2000 --eval_interval 500 --compile
Several GPUs (nccl), or several CPU processes (gloo):
    torchrun --standalone --nproc_per_node=8 train.py --method remora ...

Adapter methods pretrain the way the paper does (§5.3): every linear layer of the blocks gets an adapter, its base
weight stays frozen at its random initialization, and the embeddings, LayerNorms and head train in full.
From pretrained weights (--init_from gpt2 or PATH) only the adapters train. Each eval writes out_dir/ckpt.pt
atomically; every figure that is printed also goes to out_dir/metrics.jsonl.
"""

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import mora
from model import GPT, PRETRAINED, GPTConfig

METHODS = ("full", "lora", "mora", "relora", "remora")
RESTART_METHODS = ("relora", "remora")


class UserError(Exception):
    """A mistake in the flags, data or files, reported as one line (exit code 2) instead of a traceback."""


def integer(text: str) -> int:  # also accepts 5e3
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def flag(default, help: str, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class DataConfig:
    data: str = flag("pydoc", "UTF-8 text file to train on; 'pydoc' is the Python documentation bundled with CPython")
    tokenizer: str = flag("auto", "auto: bytes from scratch, the pretrained model's otherwise; 'bytes' (offline) or a "
                               "tiktoken encoding such as gpt2 (downloads once)")
    val_fraction: float = flag(0.1, "the last fraction of the corpus, held out for validation")


@dataclass
class AdapterConfig:
    method: str = flag("mora", "what trains", choices=METHODS)
    rank: int = flag(8, "LoRA rank r; MoRA gets the same budget: a square M of side round(sqrt((in+out)*r))",
                     type=positive(integer))
    compress: str = flag("auto", "MoRA compression; auto: rotate below rank 128, share from 128 (as the paper)",
                         choices=("auto", *mora.COMPRESSIONS))
    targets: str = flag("query,key,value,output,up,down", "comma-separated names of the linear layers to adapt")
    alpha: float = flag(None, "LoRA alpha (scaling alpha/r); default 2*rank", type=positive(float))
    merge_every: int = flag(150, "ReLoRA/ReMoRA: merge and restart the adapters every this many steps",
                            type=positive(integer))
    restart_warmup: int = flag(10, "ReLoRA/ReMoRA: steps of linear lr re-warmup after each restart", type=integer)


@dataclass
class TrainConfig:
    batch_size: int = flag(32, "sequences per micro-batch, per process", type=positive(integer))
    grad_accum: int = flag(1, "micro-batches per optimizer step, per process", type=positive(integer))
    lr: float = flag(1e-2, "peak learning rate", type=positive(float))
    min_lr_ratio: float = flag(0.1, "the cosine schedule decays to lr * min_lr_ratio")
    warmup: int = flag(50, "steps of linear lr warmup", type=integer)
    max_iters: int = flag(600, "optimizer steps", type=positive(integer))
    weight_decay: float = flag(0.1, "AdamW weight decay on weight matrices (never on adapters, norms, biases)")
    beta2: float = flag(0.99, "AdamW beta2")
    grad_clip: float = flag(1.0, "clip the gradient norm to this (0 = off)")
    eval_interval: int = flag(100, "evaluate and save a checkpoint every this many steps", type=positive(integer))
    eval_iters: int = flag(20, "batches per evaluation", type=positive(integer))
    log_interval: int = flag(50, "print a training line every this many steps", type=positive(integer))
    out_dir: str = flag(None, "where ckpt.pt and metrics.jsonl go; default out/<method>")
    init_from: str = flag("scratch", "scratch, resume (out_dir/ckpt.pt), a GPT-2 name (gpt2, gpt2-medium, gpt2-large, "
                                     "gpt2-xl; downloads once) or HuggingFace folder, or a full train.py checkpoint")
    device: str = flag("auto", "auto (cuda > mps > cpu), or cpu, cuda, cuda:1, mps")
    dtype: str = flag("auto", "auto: bfloat16 autocast on CUDA GPUs that support it, else float32",
                      choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = flag(False, "torch.compile the model (worth it on GPU)")
    seed: int = flag(1337, "random seed", type=integer)


@dataclass
class Config:
    model: GPTConfig
    data: DataConfig
    adapter: AdapterConfig
    train: TrainConfig


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    sections = {"model": GPTConfig, "data": DataConfig, "adapter": AdapterConfig, "train": TrainConfig}
    for section, cls in sections.items():
        group = parser.add_argument_group(section)
        for f in fields(cls):
            if f.name == "vocab_size":  # set by the tokenizer
                continue
            meta = dict(f.metadata)
            if f.name == "block_size":  # open until the model is known: a pretrained model brings its own
                meta["help"] += (f"; default {f.default} from scratch, the pretrained model's otherwise "
                                 f"(smaller crops it)")
                meta.update(default=None, type=positive(integer))
            if isinstance(f.default, bool):
                group.add_argument(f"--{f.name}", default=f.default, action=argparse.BooleanOptionalAction, **meta)
            else:
                meta.setdefault("type", integer if isinstance(f.default, int) else type(f.default or ""))
                group.add_argument(f"--{f.name}", **{"default": f.default, **meta})
    args = vars(parser.parse_args(argv))
    cfg = Config(**{section: cls(**{f.name: args[f.name] for f in fields(cls) if f.name in args})
                    for section, cls in sections.items()})
    if cfg.train.init_from == "scratch":  # nothing pretrained to take them from
        cfg.model.block_size = cfg.model.block_size or GPTConfig.block_size
        cfg.data.tokenizer = "bytes" if cfg.data.tokenizer == "auto" else cfg.data.tokenizer
        cfg.model.vocab_size = data.get_tokenizer(cfg.data.tokenizer).n_vocab
    if cfg.adapter.compress == "auto":
        cfg.adapter.compress = "share" if cfg.adapter.rank >= 128 else "rotate"
    if cfg.train.out_dir is None:
        cfg.train.out_dir = os.path.join("out", cfg.adapter.method)
    if not 0 < cfg.data.val_fraction < 1:
        parser.error(f"--val_fraction must be between 0 and 1, got {cfg.data.val_fraction}")
    if cfg.model.n_embd % cfg.model.n_head:
        parser.error(f"--n_embd {cfg.model.n_embd} must be a multiple of --n_head {cfg.model.n_head}")
    return cfg


# ----------------------------------------------------------------------------------------------------------------------
# Pieces that memorize_uuid.py and bench.py reuse.

def setup_device(device: str = "auto", dtype: str = "auto"):
    """Device and precision, decided in one place: (device, autocast context, dtype name)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    return device, ctx, dtype


def adapt(model: GPT, adapter: AdapterConfig, pretraining: bool) -> GPT:
    """Give `model` the adapters of adapter.method; for pretraining, keep embeddings, norms and head trainable."""
    if adapter.method == "full":
        return model
    method = "lora" if adapter.method in ("lora", "relora") else "mora"
    kwargs = {"alpha": adapter.alpha} if method == "lora" else {"compress": adapter.compress}
    try:
        mora.add_adapters(model, method, adapter.rank, [t.strip() for t in adapter.targets.split(",")], **kwargs)
    except ValueError as e:
        raise UserError(f"--targets {adapter.targets}: {e}") from None
    for name, layer in mora.adapter_layers(model).items():
        n_adapter, n_layer = mora.count_trainable(layer), layer.in_features * layer.out_features
        if n_adapter > n_layer:
            raise UserError(f"--rank {adapter.rank} gives layer {name} ({layer.in_features} -> {layer.out_features}, "
                            f"{n_layer:,} weights) an adapter of {n_adapter:,} parameters; lower --rank")
    if pretraining:
        for name, p in model.named_parameters():
            if name.startswith(("wte.", "wpe.", "lm_head.")) or ".ln_" in name or name.startswith("ln_f."):
                p.requires_grad_(True)
    return model


def get_lr(it: int, cfg: Config) -> float:
    """Warmup, then cosine decay to lr * min_lr_ratio; ReLoRA/ReMoRA re-warm after every restart (jagged cosine)."""
    t, lr = cfg.train, cfg.train.lr
    if it < t.warmup:
        return lr * (it + 1) / (t.warmup + 1)
    progress = (it - t.warmup) / max(1, t.max_iters - t.warmup)
    lr = lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    since_restart = it % cfg.adapter.merge_every
    restarted = cfg.adapter.method in RESTART_METHODS and it >= cfg.adapter.merge_every
    if restarted and since_restart < cfg.adapter.restart_warmup:
        lr *= (since_restart + 1) / (cfg.adapter.restart_warmup + 1)
    return lr


def restart_adapters(model: GPT, optimizer: torch.optim.Optimizer) -> None:
    """ReLoRA / ReMoRA: merge every adapter into its base weight, start fresh ones, and forget their Adam moments."""
    for layer in mora.adapter_layers(model).values():
        layer.restart()
        for p in layer.parameters():
            optimizer.state.pop(p, None)


def weights_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float) -> None:
    """After backward(): clip the gradient norm (of unscaled fp16 gradients), step, and clear the gradients."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def save_checkpoint(path: str, checkpoint: dict) -> None:
    """Write to a temporary file, then rename: an interrupted save never leaves a partial checkpoint behind."""
    tmp = f"{path}.tmp"
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read, it is corrupt or truncated ({type(e).__name__}); "
                        f"delete it or start over with --init_from scratch") from None


def describe_mismatch(saved: dict, wanted: dict) -> str:
    return ", ".join(f"--{k} {saved.get(k)} (this run: {v})" for k, v in wanted.items() if saved.get(k) != v)


@torch.no_grad()
def evaluate(model, files: dict, cfg: Config, device, ctx) -> dict[str, float]:
    """Mean loss over eval_iters batches per split. The batches come from a fixed seed, so every evaluation (and
    every method) sees the same windows."""
    model.eval()
    losses = {}
    for split, file in files.items():
        batches = data.Batches(file, cfg.model.block_size, cfg.train.batch_size, device, seed=cfg.train.seed + 999,
                               source=cfg.data.data)
        total = 0.0
        for _ in range(cfg.train.eval_iters):
            x, y = batches.next()
            with ctx:
                total += model(x, y)[1].item()
        losses[split] = total / cfg.train.eval_iters
    model.train()
    return losses


def format_time(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def setup_distributed(device: str) -> tuple[bool, int, int, str]:
    """(ddp, rank, world size, device) for a plain run or a torchrun process (nccl on CUDA, gloo on CPU)."""
    if "RANK" not in os.environ:
        return False, 0, 1, device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    return True, dist.get_rank(), dist.get_world_size(), device


def check_writable(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out_dir {out_dir} ({e.strerror}); pick another --out_dir") from None


def build_model(cfg: Config, ckpt_path: str) -> tuple[GPT, dict | None]:
    """The model of cfg: new (--init_from scratch), GPT-2 weights (a name or HuggingFace folder), a full train.py
    checkpoint to fine-tune (PATH), or the run in ckpt_path (resume; returns that checkpoint too). Fills in what the
    flags left open (--tokenizer auto, --block_size) from the pretrained model."""
    t, resume = cfg.train, None
    if t.init_from == "resume":
        resume = load_checkpoint(ckpt_path)
        saved = resume["config"]
        t.init_from = saved["train"]["init_from"]  # what the interrupted run started from
        if cfg.data.tokenizer == "auto":
            cfg.data.tokenizer = saved["data"]["tokenizer"]
        cfg.model.block_size = cfg.model.block_size or saved["model"]["block_size"]
        cfg.model.vocab_size = saved["model"]["vocab_size"]
        if t.init_from != "scratch":  # a fine-tune: its architecture came from the pretrained model
            cfg.model = GPTConfig(**saved["model"])
        mismatch = describe_mismatch({**saved["model"], **saved["adapter"], "tokenizer": saved["data"]["tokenizer"]},
                                     {**asdict(cfg.model), **asdict(cfg.adapter), "tokenizer": cfg.data.tokenizer})
        if mismatch:
            raise UserError(f"{ckpt_path} was trained with {mismatch}; pass the same flags, or another --out_dir")
        model = GPT(cfg.model)
    elif t.init_from == "scratch":
        model = GPT(cfg.model)
    else:
        model, own_tokenizer = load_pretrained(t.init_from, cfg.model.dropout)
        cfg.data.tokenizer = pretrained_tokenizer(cfg.data.tokenizer, own_tokenizer, model,
                                                  f"--init_from {t.init_from}")
        if cfg.model.block_size:
            try:
                model.crop_block_size(cfg.model.block_size)
            except ValueError as e:
                raise UserError(f"--block_size {cfg.model.block_size}: {e}") from None
        cfg.model = model.config  # the pretrained architecture wins over the other flags
    model = adapt(model, cfg.adapter, pretraining=t.init_from == "scratch")
    if resume is not None:
        model.load_state_dict(resume["model"])
    return model, resume


def load_pretrained(source: str, dropout: float, flag: str = "--init_from") -> tuple[GPT, str]:
    """(model, its tokenizer) from GPT-2 weights (a name in PRETRAINED or a HuggingFace folder) or from a full
    train.py checkpoint; errors name `flag`."""
    if source in PRETRAINED or os.path.isdir(source):
        try:
            return GPT.from_pretrained(source, dropout), "gpt2"
        except (ImportError, OSError, ValueError) as e:
            raise UserError(f"{flag} {source}: {e}") from None
    pretrained = load_checkpoint(source)
    saved = pretrained["config"]
    if saved["adapter"]["method"] != "full":
        raise UserError(f"{flag} {source} is a {saved['adapter']['method']} checkpoint; fine-tuning starts "
                        f"from a full one (train it with --method full)")
    model = GPT(GPTConfig(**saved["model"]))
    model.load_state_dict(pretrained["model"])
    return model, saved["data"]["tokenizer"]


def pretrained_tokenizer(requested: str, own: str, model: GPT, source: str) -> str:
    """The tokenizer to fine-tune `model` with: its own for --tokenizer auto. Another must fit its vocabulary; a
    train.py checkpoint takes only its own (a GPT-2 folder may have been trained with another BPE)."""
    if requested == "auto":
        return own
    if own != "gpt2" and requested != own:
        raise UserError(f"{source} uses --tokenizer {own}; pass the same")
    n_vocab = data.get_tokenizer(requested).n_vocab
    if n_vocab > model.config.vocab_size:
        raise UserError(f"--tokenizer {requested} has {n_vocab:,} tokens, more than the {model.config.vocab_size:,} "
                        f"of {source}")
    return requested


def restart_metrics(path: str, keep_before: int) -> None:
    """Start metrics.jsonl afresh, keeping (on resume) what was logged before the checkpoint's iteration."""
    resumed = keep_before > 0 and os.path.exists(path)
    kept = [line for line in open(path) if json.loads(line).get("iter", -1) < keep_before] if resumed else []
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    t = cfg.train
    ddp, rank, world, device = setup_distributed(t.device)
    master = rank == 0
    log = print if master else (lambda *args, **kwargs: None)
    device, ctx, dtype = setup_device(device, t.dtype)
    torch.manual_seed(t.seed)  # the same on every process: restarts draw identical new adapters everywhere
    ckpt_path = os.path.join(t.out_dir, "ckpt.pt")
    metrics_path = os.path.join(t.out_dir, "metrics.jsonl")
    if master:
        check_writable(t.out_dir)

    model, resume = build_model(cfg, ckpt_path)
    if not master:  # rank 0 tokenizes first; the others then find its cache
        dist.barrier()
    files = data.prepare(cfg.data.data, cfg.data.tokenizer, cfg.data.val_fraction)
    if ddp and master:
        dist.barrier()
    model.to(device)
    optimizer = model.configure_optimizers(t.weight_decay, t.lr, (0.9, t.beta2), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    train_batches = data.Batches(files["train"], cfg.model.block_size, t.batch_size, device, seed=t.seed + rank,
                                 source=cfg.data.data)
    iter_num, best_val = 0, float("inf")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        iter_num, best_val = resume["iter_num"], resume["best_val_loss"]
        torch.set_rng_state(resume["rng"]["torch"])
        train_batches.generator.set_state(resume["rng"]["batches"][rank])

    raw_model = model
    if t.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def record(entry: dict) -> None:
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    if master:
        restart_metrics(metrics_path, keep_before=iter_num)
    record({"kind": "config", **asdict(cfg)})
    n_trainable, n_total = mora.count_trainable(raw_model), raw_model.num_params()
    tokens_per_iter = t.batch_size * t.grad_accum * world * cfg.model.block_size
    log(f"config: {json.dumps(asdict(cfg))}")
    log(f"device {device}, dtype {dtype}, {world} process(es), {tokens_per_iter:,} tokens/iter, "
        f"{n_trainable:,} trainable of {n_total:,} parameters"
        + (f", resuming at iter {iter_num}" if resume is not None else ""))

    t_start = t_last = time.time()
    iters_since_log, loss_sum = 0, torch.zeros((), device=device)
    val_losses, diverged_at = None, None
    restarts = cfg.adapter.method in RESTART_METHODS
    try:
        while True:
            lr = get_lr(iter_num, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if iter_num % t.eval_interval == 0 or iter_num == t.max_iters:
                losses = evaluate(model, files, cfg, device, ctx)
                best_val = min(best_val, losses["val"])
                log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                    f"val ppl {math.exp(losses['val']):.2f}")
                record({"kind": "eval", "iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                        "val_ppl": math.exp(losses["val"])})
                val_losses = losses["val"]
                if iter_num > 0:
                    batch_states = [train_batches.generator.get_state()]
                    if ddp:
                        gathered = [None] * world
                        dist.all_gather_object(gathered, batch_states[0])
                        batch_states = gathered
                    if master:
                        save_checkpoint(ckpt_path, {
                            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                            "config": asdict(cfg), "iter_num": iter_num, "best_val_loss": best_val,
                            "rng": {"torch": torch.get_rng_state(), "batches": batch_states}})
                t_last = time.time()  # evaluation and saving stay out of ms/iter
            if iter_num >= t.max_iters:
                break

            for micro in range(t.grad_accum):
                if ddp:
                    model.require_backward_grad_sync = micro == t.grad_accum - 1
                x, y = train_batches.next()
                with ctx:
                    _, loss = model(x, y)
                loss_sum += loss.detach() / t.grad_accum
                scaler.scale(loss / t.grad_accum).backward()
            optimizer_step(raw_model, optimizer, scaler, t.grad_clip)
            iters_since_log += 1

            at_log = (iter_num + 1) % t.log_interval == 0 or iter_num + 1 == t.max_iters
            if at_log:
                loss_value = loss_sum.item() / iters_since_log
                now = time.time()
                dt = (now - t_last) / iters_since_log
                log(f"iter {iter_num}: loss {loss_value:.4f}, lr {lr:.1e}, {dt * 1000:.0f} ms/iter, "
                    f"{tokens_per_iter / dt / 1000:.1f}k tok/s, eta {format_time(dt * (t.max_iters - iter_num - 1))}")
                record({"kind": "train", "iter": iter_num, "loss": loss_value, "lr": lr, "ms_per_iter": dt * 1000,
                        "tokens_per_s": tokens_per_iter / dt})
                t_last, iters_since_log, loss_sum = now, 0, torch.zeros((), device=device)
            iter_num += 1
            at_restart = restarts and iter_num % cfg.adapter.merge_every == 0 and iter_num < t.max_iters
            if (at_log or at_restart) and not weights_finite(raw_model):  # the same on every DDP rank
                log(f"iter {iter_num}: the weights are no longer finite: training diverged, stopping (lower --lr)")
                record({"kind": "diverged", "iter": iter_num})
                diverged_at, val_losses = iter_num, math.nan
                break
            if at_restart:
                restart_adapters(raw_model, optimizer)
                log(f"iter {iter_num}: merged and restarted {len(mora.adapter_layers(raw_model))} adapters")
                record({"kind": "restart", "iter": iter_num})
    except KeyboardInterrupt:
        last = "no checkpoint was written yet" if not os.path.exists(ckpt_path) else \
            f"{ckpt_path} holds the last checkpoint: continue with --init_from resume"
        log(f"interrupted at iter {iter_num}; {last}")
        sys.exit(130)

    val_per_rank = [val_losses]
    if ddp:
        val_per_rank = [None] * world
        dist.all_gather_object(val_per_rank, val_losses)
        dist.barrier()  # nobody tears down while a peer still talks (gloo aborts on a closed connection)
        dist.destroy_process_group()
    summary = {"kind": "summary", "method": cfg.adapter.method, "trainable_params": n_trainable,
               "total_params": n_total, "best_val_loss": best_val, "best_val_ppl": math.exp(best_val),
               "final_val_loss": val_losses, "val_loss_per_rank": val_per_rank, "diverged_at": diverged_at,
               "wall_time_s": time.time() - t_start}
    log(f"done: method {cfg.adapter.method}, {n_trainable:,} trainable parameters, final val loss {val_losses:.4f} "
        f"(ppl {math.exp(val_losses):.2f}; best {best_val:.4f}), wall time {format_time(summary['wall_time_s'])}")
    record(summary)
    return summary


if __name__ == "__main__":
    try:
        main()
    except (UserError, data.DataError) as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
