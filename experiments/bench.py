"""
Speed and memory of the adapters and of train.py's step, side by side. Prints markdown tables, writes JSON.

    python -m experiments.bench --quick              # about a minute on a 2-core CPU
    python -m experiments.bench                      # all shapes and ranks (CPU: about 25 minutes)
    python -m experiments.bench --gpt2               # only the GPT-2-small fine-tuning step: a few minutes on CPU
    python -m experiments.bench --preset gpu         # one CUDA GPU: larger batches, bf16 autocast, compiled GPT-2 step

Layer level, for the default GPT's shapes and LLaMA-2-7B's, at r = 8 and 256 (where the adapter fits the layer):
forward + backward of a frozen nn.Linear, LoRALinear and MoRALinear with each compression; delta_weight() against
one clone of a weight-sized tensor (new memory), merge() against one copy_ into existing memory (float32 and bf16);
memory that autograd saves for backward. Model level: ms/iter and tokens/s of train.py's step for full, LoRA and
MoRA, with each layer's default route and forced through the operators, what the step saves for backward (under its
autocast) and, on a GPU, its own peak memory. Small layers (up to mora.DENSE_MAX_WEIGHTS weights) run each adapter
both ways: dense (W + dW, the default there) and through the adapter's own operators. GPT-2 small and medium:
trainable parameters, gradient and AdamW bytes, counted on the meta device. Timings are medians over repeats, after
warm-up; CUDA events on GPU.

At the widths users fine-tune: one fine-tuning step of a GPT-2-small-shaped model (12 blocks, d=768, vocabulary
50,257, random init, nothing downloads) with every projection adapted at r=8 and everything else frozen, for LoRA
and each MoRA compression, interleaved; beside the measured ratio to LoRA, the floor that arithmetic sets (multiply-
adds per token, forward and backward), and the operations dispatched (aten ops, views excluded: on a GPU each is a
kernel launch), per step and per adapted 768 x 768 layer under bf16 autocast.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mora
import train
from model import GPT, PRETRAINED, GPTConfig, setup_device

GPT_SHAPES = [(128, 128), (128, 512), (512, 128)]
GPT2_TARGETS = ["query", "key", "value", "output", "up", "down"]
LLAMA_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]
PRESETS = {  # tokens per layer call (small, LLaMA-sized layers), repeats, model-level batch and dtype
    "cpu": {"tokens": (4096, 512), "repeats": 7, "warmup": 2, "model_batch": 32, "dtype": "float32",
            "gpt2_batch": (4, 128)},
    "quick": {"tokens": (2048, 64), "repeats": 3, "warmup": 1, "model_batch": 16, "dtype": "float32",
              "gpt2_batch": (2, 64)},
    "gpu": {"tokens": (16384, 8192), "repeats": 12, "warmup": 3, "model_batch": 64, "dtype": "auto",
            "gpt2_batch": (16, 512), "compile": True},
}


def timed(fns, device: torch.device, repeats: int, warmup: int, setup=None) -> list[float]:
    """Median milliseconds of each of fns over `repeats` rounds. The calls are interleaved, so that drift in the
    machine's speed hits all alike; setup() runs untimed before each call."""
    for _ in range(warmup):
        for fn in fns:
            setup and setup()
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            setup and setup()
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1000)
    return [statistics.median(samples) for samples in times]


def saved_for_backward_mb(fn) -> float:
    """Megabytes of distinct tensors that autograd keeps for the backward pass of fn()."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()) / 2**20


def make_layer(kind: str, n_in: int, n_out: int, r: int, device, dense: bool | None, dtype=torch.float32):
    torch.manual_seed(0)
    base = nn.Linear(n_in, n_out, device=device, dtype=dtype)
    if kind == "base":
        return base.requires_grad_(False)
    layer = mora.LoRALinear(base, r, dense=dense) if kind == "lora" else mora.MoRALinear(base, r, kind, dense=dense)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_(std=0.01)
    return layer


def fits(kind: str, n_in: int, n_out: int, r: int) -> bool:
    width = r if kind == "lora" else mora.r_hat_of(n_in, n_out, r, even=kind == "rotate")
    return width <= min(n_in, n_out)


def layer_bench(shapes, ranks, preset, device) -> list[dict]:
    rows = []
    kinds = ["lora"] + list(mora.COMPRESSIONS)
    for n_in, n_out in shapes:
        tokens = preset["tokens"][0] if n_in * n_out <= mora.DENSE_MAX_WEIGHTS else preset["tokens"][1]
        x = torch.randn(tokens, n_in, device=device, requires_grad=True)
        time_it = lambda *fns, **kw: timed(fns, device, preset["repeats"], preset["warmup"], **kw)
        fwd_bwd = lambda layer: time_it(lambda: layer(x).sum().backward())[0]
        base = make_layer("base", n_in, n_out, 0, device, None)
        base_ms = fwd_bwd(base)
        weight, base_bf16 = torch.empty(n_out, n_in, device=device), base.weight.bfloat16()
        weight_bf16 = torch.empty_like(base_bf16)
        # Floors: writing a weight-sized tensor once into memory that exists (copy_, float32 to float32 and bf16 to
        # bf16: no conversion), and into a new tensor (clone: on CPU the OS zero-fills every fresh page first, which
        # costs more than the write).
        copy_floor, alloc_floor, copy_bf16 = time_it(lambda: weight.copy_(base.weight), base.weight.clone,
                                                     lambda: weight_bf16.copy_(base_bf16))
        for r in ranks:
            routes = [None, False] if n_in * n_out <= mora.DENSE_MAX_WEIGHTS else [None]
            for dense in routes:
                row = {"in": n_in, "out": n_out, "r": r, "tokens": tokens, "route": "operators" if dense is False else
                       ("dense" if n_in * n_out <= mora.DENSE_MAX_WEIGHTS else "operators"),
                       "base_ms": base_ms, "copy_floor_ms": copy_floor, "alloc_floor_ms": alloc_floor,
                       "copy_floor_bf16_ms": copy_bf16,
                       "base_saved_mb": saved_for_backward_mb(lambda: base(x))}
                for kind in kinds:
                    if not fits(kind, n_in, n_out, r):
                        continue
                    layer = make_layer(kind, n_in, n_out, r, device, dense)
                    row[f"{kind}_ms"] = fwd_bwd(layer)
                    row[f"{kind}_saved_mb"] = saved_for_backward_mb(lambda: layer(x))
                    if dense is None:  # route-independent figures, once per shape and rank
                        with torch.no_grad():  # merge() adds dW to W0 and restarts the adapter (dW = 0 after the
                            row[f"{kind}_delta_ms"] = time_it(layer.delta_weight)[0]  # first: the same work)
                            row[f"{kind}_merge_ms"] = time_it(layer.merge)[0]
                            bf16 = make_layer(kind, n_in, n_out, r, device, dense, dtype=torch.bfloat16)
                            row[f"{kind}_merge_bf16_ms"] = time_it(bf16.merge)[0]
                    del layer
                rows.append(row)
                print(f"  layer {n_in}x{n_out} r={r} ({row['route']}) done", flush=True)
    return rows


def model_bench(preset, device) -> list[dict]:
    """train.py's optimizer step on the default config, methods interleaved so that drift hits all alike. LoRA and
    MoRA run twice: with each layer's default route (dense for these small layers) and forced through the operators."""
    _, ctx, dtype = setup_device(str(device), preset["dtype"])
    x = y = None
    models = {}
    for method, route in (("full", "-"), ("lora", "default"), ("mora", "default"), ("lora", "operators"),
                          ("mora", "operators")):
        cfg = train.parse_args(["--method", method, "--batch_size", str(preset["model_batch"])])
        torch.manual_seed(0)
        model = train.build_model(cfg)[0].to(device)  # as train.py builds it: adapters, embeddings trainable
        for layer in mora.adapter_layers(model).values():
            layer.dense = layer.dense and route == "default"
        models[method, route] = (model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type), cfg)
        x = torch.randint(0, 257, (cfg.batch_size, cfg.block_size), device=device)
        y = torch.randint(0, 257, x.shape, device=device)

    def step(model, optimizer, cfg):  # train.py's own step: forward, backward, clip, AdamW
        train.train_step(model, optimizer, [(x, y)], ctx, 1e-3, cfg.grad_clip)

    steps = [lambda args=args: step(*args) for args in models.values()]
    times = timed(steps, device, preset["repeats"] * 2, preset["warmup"])
    rows = []
    for ((method, route), (model, optimizer, cfg)), ms in zip(models.items(), times):
        rows.append({"method": method, "route": route, "dtype": dtype,
                     "trainable_params": mora.count_trainable(model), "ms_per_iter": ms,
                     "tokens_per_s": x.numel() / ms * 1000, "saved_mb": saved_under(ctx, lambda: model(x, y)[1]),
                     "peak_cuda_mb": step_peak_cuda_mb(lambda: step(model, optimizer, cfg), device)})
    return rows


def saved_under(ctx, fn) -> float:  # what autograd saves for the step as it runs: under its autocast (bf16 halves it)
    def forward():
        with ctx:
            return fn()
    return saved_for_backward_mb(forward)


def step_peak_cuda_mb(step, device: torch.device) -> float | None:
    """The step's own peak CUDA memory: above what was allocated before it (every model of the table is resident)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


class DispatchCount(TorchDispatchMode):
    """Counts the aten operations that run inside it, views excluded: on a GPU, each of the others is a kernel."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def dispatched(fn) -> int:
    with DispatchCount() as counter:
        fn()
    return counter.count


class Traffic(TorchDispatchMode):
    """Each aten operation that runs inside it, views excluded, with the bytes of the tensors it reads and writes:
    a kernel's memory traffic, whatever the device (on "meta" no arithmetic runs at all)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
            self.ops.append((func.overloadpacket.__name__, sum(t.numel() * t.element_size() for t in tensors)))
        return out


def layer_traffic(kind: str, d: int = 768, tokens: tuple[int, int] = (16, 512)) -> dict:
    """One d x d layer's forward + backward at GPT-2-small's shapes in bf16, traced on the meta device (shapes only,
    nothing computed): operations dispatched, MB they move, and the operations that move most."""
    with torch.device("meta"):
        layer = make_layer(kind, d, d, 8, "meta", dense=False, dtype=torch.bfloat16)
        x = torch.empty(*tokens, d, dtype=torch.bfloat16, requires_grad=True)
    with Traffic() as traffic:
        layer(x).sum().backward()
    by_op = {}
    for op, size in traffic.ops:
        by_op[op] = by_op.get(op, 0) + size / 2**20
    return {"kind": kind, "ops": len(traffic.ops), "mb": sum(by_op.values()),
            "top": sorted(by_op.items(), key=lambda item: -item[1])[:6]}


def print_traffic(rows: list[dict]) -> None:
    print("\nWhere one 768x768 layer's step goes: forward + backward, bf16, 16 x 512 tokens, traced on meta\n")
    print("| adapter | operations | MB read and written | / LoRA's | the operations that move most (MB) |")
    print("|---" * 5 + "|")
    lora = next(row for row in rows if row["kind"] == "lora")
    for row in rows:
        top = ", ".join(f"{op} {mb:.0f}" for op, mb in row["top"])
        print(f"| {row['kind']} | {row['ops']} | {row['mb']:.0f} | {row['mb'] / lora['mb']:.2f} | {top} |")


OURS, HF = "this project's GPT", "HuggingFace GPT-2"  # the two models of the GPT-2-small step
OUR_SHAPES = lambda d: [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]  # (in, out): query, key, value, output, up, down
HF_SHAPES = lambda d: [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]  # c_attn (q, k, v fused), c_proj, c_fc, c_proj


def gpt2_macs(kind: str, r: int, tokens_per_sequence: int, d: int = 768, n_layer: int = 12, vocab: int = 50257,
              shapes=OUR_SHAPES) -> int:
    """Multiply-adds per token of one GPT-2-small fine-tuning step, forward and backward, by arithmetic: each frozen
    projection in x out twice (forward, input gradient), an adapter three times its forward (forward, input and
    weight gradients), attention's scores and values 2 T d forward and twice that backward, the frozen head twice.
    kind "full": every projection and the head (tied to the embedding) trained, three times their forward."""
    trained = kind == "full"
    total = n_layer * 3 * 2 * tokens_per_sequence * d + (3 if trained else 2) * vocab * d
    for n_in, n_out in shapes(d):
        if trained:  # forward, input gradient, and the weight's own gradient
            total += n_layer * 3 * n_in * n_out
            continue
        if kind == "lora":
            adapter = r * (n_in + n_out)
        else:
            size = mora.r_hat_of(n_in, n_out, r, even=mora.COMPRESSIONS[kind].even_r_hat)
            blocks = -(-n_in // size) if issubclass(mora.COMPRESSIONS[kind], mora.Decouple) else 1
            adapter = blocks * size * size
        total += n_layer * (2 * n_in * n_out + 3 * adapter)
    return total


class CausalLM(nn.Module):
    """A HuggingFace causal LM as train.train_step calls a model: (x, y) -> (logits, loss over every position)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        logits = self.model(input_ids=x).logits
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def hf_contenders(kinds, n_layer: int, d: int, vocab: int, length: int) -> dict:
    """HuggingFace's GPT-2 (random init, no dropout, as this project's GPT) with PEFT's LoRA when peft is importable
    (the peer: fan_in_fan_out for GPT-2's Conv1D, alpha 2r, no dropout), and with this project's adapters: name ->
    (model, adapter kind). Empty without transformers: both packages are optional."""
    try:
        import transformers
    except ImportError:
        return {}
    targets, models = ["c_attn", "c_proj", "c_fc"], {}

    def gpt2():
        torch.manual_seed(0)
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=d, n_layer=n_layer,
                                         n_head=d // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=vocab - 1, eos_token_id=vocab - 1)
        return transformers.GPT2LMHeadModel(config)
    try:
        import peft
        config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, fan_in_fan_out=True)
        models["peft lora"] = (CausalLM(peft.get_peft_model(gpt2(), config)), "lora")
    except ImportError:
        pass
    for kind in kinds:
        kwargs = {} if kind == "lora" else {"compress": kind}
        models[kind] = (CausalLM(mora.add_adapters(gpt2(), "lora" if kind == "lora" else "mora", 8, targets,
                                                   **kwargs)), kind)
    return models


def gpt2_step_bench(preset, device, n_layer: int = 12, d: int = 768, vocab: int = 50257,
                    kinds: tuple[str, ...] = ("lora", *mora.COMPRESSIONS), peers: bool = True) -> list[dict]:
    """One fine-tuning step (train.train_step, AdamW) at GPT-2-small's shapes, as people run it: eager and, with
    preset["compile"], compiled too, every contender timed interleaved. Contenders: this project's GPT with each adapter
    and with every weight trainable (full); with peers, HuggingFace's GPT-2 with PEFT's LoRA (when peft is importable)
    and with this project's adapters (when transformers is). A row: ms, the ratio to LoRA's step in the same model
    and mode (PEFT's for HuggingFace's model, when present), the same ratio of multiply-adds (the floor arithmetic
    sets), the step's own peak CUDA memory, and, for this project's GPT, the operations it dispatches eager (on a GPU
    each is a kernel launch) per step and per d x d layer's forward + backward under bf16 autocast."""
    _, ctx, dtype = setup_device(str(device), preset["dtype"])
    batch, length = preset["gpt2_batch"]
    x, y = (torch.randint(0, vocab, (batch, length), device=device) for _ in range(2))  # random tokens: cost only
    contenders = {}  # (model, adapter) -> (module, optimizer, multiply-adds per token)
    for kind in ("full", *kinds):
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=length, vocab_size=vocab, n_layer=n_layer, n_head=d // 64, n_embd=d))
        if kind != "full":
            kwargs = {} if kind == "lora" else {"compress": kind}
            mora.add_adapters(model, "lora" if kind == "lora" else "mora", 8, GPT2_TARGETS, **kwargs)
        model.to(device)
        optimizer = model.configure_optimizers(0.0, 1e-3, (0.9, 0.99), device.type)
        contenders[OURS, kind] = model, optimizer, gpt2_macs(kind, 8, length, d, n_layer, vocab)
    for name, (model, kind) in (hf_contenders(kinds, n_layer, d, vocab, length) if peers else {}).items():
        model.to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.99),
                                      fused=device.type == "cuda")
        contenders[HF, name] = model, optimizer, gpt2_macs(kind, 8, length, d, n_layer, vocab,
                                                                             HF_SHAPES)
    # compiled too, with preset["compile"]: this project's adapters only (a 12-block compile takes about a minute)
    compiles = lambda family, kind: preset.get("compile") and family == OURS and kind != "full"
    modes = lambda family, kind: [False, True] if compiles(family, kind) else [False]
    steps = {(family, kind, compiled): (lambda m=(torch.compile(model) if compiled else model), opt=optimizer:
                                        train.train_step(m, opt, [(x, y)], ctx, 1e-3, 1.0))
             for (family, kind), (model, optimizer, _) in contenders.items() for compiled in modes(family, kind)}
    times = dict(zip(steps, timed(list(steps.values()), device, preset["repeats"], preset["warmup"])))
    layer_x = torch.randn(batch, length, d, device=device, requires_grad=True)

    def layer_ops(kind: str, dense: bool | None) -> int:  # one d x d layer's forward + backward under bf16 autocast
        layer, layer_x.grad = make_layer(kind, d, d, 8, device, dense), None  # no accumulation into an old grad
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return dispatched(lambda: layer(layer_x).float().sum().backward())

    rows = [{"model": OURS, "kind": "frozen layer", "ops_per_layer": layer_ops("base", None)}]
    for (family, kind, compiled), step in steps.items():
        reference = ("peft lora" if (family, "peft lora") in contenders else "lora", compiled)
        ours = family == OURS
        rows.append({"model": family, "kind": kind, "dtype": dtype, "compiled": compiled,
                     "ms_per_step": times[family, kind, compiled],
                     "step_over_lora": times[family, kind, compiled] / times[(family, *reference)],
                     "floor_over_lora": contenders[family, kind][2] / contenders[family, reference[0]][2],
                     "macs_per_token": contenders[family, kind][2], "peak_cuda_mb": step_peak_cuda_mb(step, device),
                     "ops_per_step": dispatched(step) if ours and not compiled else None,
                     "ops_per_layer": layer_ops(kind, False) if ours and not compiled and kind != "full" else None})
    return rows


def print_gpt2(rows: list[dict]) -> None:
    print("\nFine-tuning step at GPT-2-small's shapes, every projection adapted at r=8, random init\n")
    print("| model | adapter | dtype | compiled | ms/step | step / LoRA | floor / LoRA (multiply-adds) | peak CUDA MB "
          "| ops per step (eager) | ops per d x d layer, bf16 | layer ops / LoRA's |")
    print("|---" * 11 + "|")
    lora_layer = next(row["ops_per_layer"] for row in rows if row["kind"] == "lora" and row["ops_per_layer"])
    for row in rows:
        step_ops = "—" if row.get("ops_per_step") is None else f"{row['ops_per_step']:,}"
        layer = ("— | —" if row["ops_per_layer"] is None else
                 f"{row['ops_per_layer']} | {row['ops_per_layer'] / lora_layer:.2f}")
        if "ms_per_step" not in row:  # the frozen layer: its operations only
            print(f"| {row['model']} | {row['kind']} | — | — | — | — | — | — | — | {layer} |")
            continue
        print(f"| {row['model']} | {row['kind']} | {row['dtype']} | {'yes' if row['compiled'] else 'no'} | "
              f"{row['ms_per_step']:.1f} | {row['step_over_lora']:.2f} | {row['floor_over_lora']:.2f} | "
              f"{fmt(row['peak_cuda_mb'], 0)} | {step_ops} | {layer} |")


def gpt2_memory(rank: int = 8) -> list[dict]:
    """Trainable parameters, their gradients and AdamW's two moments, in bytes (float32), for GPT-2 small and medium
    fine-tuned in full, with LoRA or with MoRA on every projection: counted on the meta device, nothing runs."""
    rows = []
    for name in ("gpt2", "gpt2-medium"):
        for method in ("full", "lora", "mora"):
            cfg = train.parse_args(["--method", method] + ([] if method == "full" else ["--rank", str(rank)]))
            with torch.device("meta"):
                model = train.adapt(GPT(GPTConfig(vocab_size=50257, block_size=1024, **PRETRAINED[name])),
                                    cfg, pretraining=False)
            trainable = mora.count_trainable(model)
            rows.append({"model": name, "method": method, "total_params": model.num_params(),
                         "trainable_params": trainable, "grad_bytes": 4 * trainable, "adam_bytes": 8 * trainable})
    return rows


def fmt(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_tables(layers: list[dict], models: list[dict]) -> None:
    kinds = ["lora"] + list(mora.COMPRESSIONS)
    print("\nForward + backward, ms (input requires grad; adapter weights random)\n")
    print("| in x out | r | tokens | route | frozen base | LoRA | " + " | ".join(f"MoRA {k}" for k in mora.COMPRESSIONS)
          + " | MoRA rotate / LoRA | MoRA share / LoRA |")
    print("|---" * 12 + "|")
    for row in layers:
        ratio = lambda kind: fmt(row.get(f"{kind}_ms") and row.get("lora_ms") and row[f"{kind}_ms"] / row["lora_ms"])
        print(f"| {row['in']}x{row['out']} | {row['r']} | {row['tokens']} | {row['route']} | {fmt(row['base_ms'])} | "
              + " | ".join(fmt(row.get(f"{k}_ms")) for k in kinds) + f" | {ratio('rotate')} | {ratio('share')} |")
    print("\nBuilding dW (delta_weight: a new tensor) and merging it into W0 (merge: in place), ms, and as multiples "
          "of their floors: one clone of a weight-sized tensor (new memory) and one copy_ into existing memory, "
          "float32 and bf16\n")
    print("| in x out | r | method | clone floor | dW | dW / clone | copy floor fp32 | merge fp32 | merge / copy "
          "| copy floor bf16 | merge bf16 | merge / copy |")
    print("|---" * 12 + "|")
    for row in layers:
        for kind in ("lora", "share", "rotate"):
            if f"{kind}_delta_ms" not in row:
                continue
            get = lambda key: row[f"{kind}_{key}"]
            copy, alloc, copy_bf16 = row["copy_floor_ms"], row["alloc_floor_ms"], row["copy_floor_bf16_ms"]
            print(f"| {row['in']}x{row['out']} | {row['r']} | {kind} | {alloc:.2f} | {get('delta_ms'):.2f} | "
                  f"{get('delta_ms') / alloc:.1f} | {copy:.2f} | {get('merge_ms'):.2f} | "
                  f"{get('merge_ms') / copy:.1f} | "
                  f"{copy_bf16:.2f} | {get('merge_bf16_ms'):.2f} | {get('merge_bf16_ms') / copy_bf16:.1f} |")
    print("\nMemory saved for backward, MB (the frozen layer saves its input; adapters add their own)\n")
    print("| in x out | r | tokens | route | frozen base | LoRA | "
          + " | ".join(f"MoRA {k}" for k in mora.COMPRESSIONS) + " |")
    print("|---" * 10 + "|")
    for row in layers:
        print(f"| {row['in']}x{row['out']} | {row['r']} | {row['tokens']} | {row['route']} | "
              f"{fmt(row['base_saved_mb'])} | " + " | ".join(fmt(row.get(f"{k}_saved_mb")) for k in kinds) + " |")
    print("\nModel level: one optimizer step of train.py's default GPT\n")
    print("| method | route | dtype | trainable params | ms/iter | tokens/s | step / LoRA step (default route) "
          "| saved for backward MB | step's peak CUDA MB |")
    print("|---" * 9 + "|")
    lora = next(r["ms_per_iter"] for r in models if (r["method"], r["route"]) == ("lora", "default"))
    for row in models:
        print(f"| {row['method']} | {row['route']} | {row['dtype']} | {row['trainable_params']:,} | "
              f"{row['ms_per_iter']:.1f} | "
              f"{row['tokens_per_s']:,.0f} | {row['ms_per_iter'] / lora:.2f} | {row['saved_mb']:.1f} | "
              f"{fmt(row['peak_cuda_mb'], 0)} |")


def print_memory(rows: list[dict]) -> None:
    print("\nFine-tuning GPT-2 at r=8 on every projection: what training adds to the weights, float32 (counted, not "
          "run)\n")
    print("| model | method | parameters | trainable | gradients MB | AdamW state MB |")
    print("|---" * 6 + "|")
    for row in rows:
        print(f"| {row['model']} | {row['method']} | {row['total_params']:,} | {row['trainable_params']:,} | "
              f"{row['grad_bytes'] / 2**20:,.1f} | {row['adam_bytes'] / 2**20:,.1f} |")


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, shapes and repeats: under a minute on CPU")
    parser.add_argument("--preset", choices=("cpu", "gpu"), help="default: gpu on a CUDA device, else cpu")
    parser.add_argument("--gpt2", action="store_true", help="only the GPT-2-small fine-tuning step and op counts")
    parser.add_argument("--traffic", action="store_true", help="only a 768x768 layer's operations and bytes, traced")
    parser.add_argument("--compile", action="store_true", help="torch.compile the GPT-2 step (on in the gpu preset)")
    parser.add_argument("--kinds", default=",".join(["lora", *mora.COMPRESSIONS]), help="adapters in the GPT-2 step")
    parser.add_argument("--out", default=os.path.join("out", "bench"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if "lora" not in kinds or not set(kinds) <= {"lora", *mora.COMPRESSIONS}:
        parser.error(f"--kinds {args.kinds}: lora (the reference) and names among {list(mora.COMPRESSIONS)}")
    if args.traffic:  # no timing: shapes on the meta device, nothing to run
        rows = [layer_traffic(kind) for kind in ["base", *kinds]]
        print_traffic(rows)
        return {"traffic": rows}
    device, _, _ = setup_device(args.device)
    name = "quick" if args.quick else args.preset or ("gpu" if device.type == "cuda" else "cpu")
    preset = dict(PRESETS[name], compile=PRESETS[name].get("compile", False) or args.compile)
    shapes = GPT_SHAPES + (LLAMA_SHAPES[1:2] if args.quick else LLAMA_SHAPES)
    ranks = [8] if args.quick else [8, 256]
    machine = machine_name(device)
    print(f"bench: preset {name}, device {device} ({machine}), torch {torch.__version__}")
    gpt2 = gpt2_step_bench(preset, device, kinds=tuple(kinds))
    layers, models, memory = ([], [], []) if args.gpt2 else (layer_bench(shapes, ranks, preset, device),
                                                              model_bench(preset, device), gpt2_memory())
    if not args.gpt2:
        print_tables(layers, models)
        print_memory(memory)
    print_gpt2(gpt2)
    results = {"preset": name, "device": str(device), "machine": machine, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "layers": layers, "models": models, "gpt2_memory": memory,
               "gpt2_step": gpt2}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench-{name}{'-gpt2' if args.gpt2 else ''}-{device.type}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nresults: {path}")
    return results


if __name__ == "__main__":
    main()
