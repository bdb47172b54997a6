"""
A GPT-2-architecture language model in the style of nanoGPT (karpathy/nanoGPT), built from GPTConfig alone.

Every projection is its own nn.Linear with a name that says what it does, so that adapters can target it by name:

    h.{i}.attn.query / .key / .value / .output       attention projections
    h.{i}.mlp.up / .down                              MLP projections

GPT.from_pretrained("gpt2") loads OpenAI's GPT-2 weights through HuggingFace transformers (optional; imported only
there). No data, I/O or training code lives here; see train.py.
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 128  # context length in tokens
    vocab_size: int = 257  # 256 bytes + <|endoftext|>: train.py's offline tokenizer
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in linear layers and LayerNorms, as GPT-2

    @classmethod
    def of(cls, values: dict) -> "GPTConfig":  # the model's fields out of a larger dict, such as a run's flags
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd={config.n_embd} must be a multiple of n_head={config.n_head}")
        self.n_head, self.dropout = config.n_head, config.dropout
        self.query = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.key = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.value = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.output = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
                   for proj in (self.query, self.key, self.value))
        if cache is not None:  # generation: keys and values of earlier positions are kept, not recomputed
            if cache:
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)  # (B, nh, past + T, hs)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - T  # cached positions before x
        mask = None  # no past: causal; one new token: it sees everything; else query t sees keys up to past + t
        if past and T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=past == 0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.output(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate="tanh")))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


# HuggingFace's GPT-2 family: all have a 50,257-token vocabulary and 1,024 positions.
PRETRAINED = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
              "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
              "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
              "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600)}  # 1558M


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
            if name.endswith(("attn.output.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied head counts once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, caches: list[dict] | None = None):
        """idx (B, T) -> logits, and the loss when targets are given. caches (one dict per block, see generate())
        hold the keys and values of the positions before idx."""
        B, T = idx.shape
        past = caches[0]["k"].shape[2] if caches and caches[0] else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches else None)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None  # (B, 1, vocab): only the next token is needed
        logits = self.lm_head(x)  # (B, T, vocab)
        # A target of -1 adds no loss: memorize_uuid.py marks the padding after each answer with it.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context to block_size positions (drop the rest of the position table); it cannot grow."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size {block_size} must be between 1 and the model's {self.config.block_size}: "
                             f"a learned position table can be cropped, not extended")
        self.config.block_size = block_size
        self.wpe.weight = nn.Parameter(self.wpe.weight[:block_size].detach().clone())
        self.wpe.num_embeddings = block_size

    @classmethod
    def from_pretrained(cls, name: str, dropout: float = 0.0) -> "GPT":
        """GPT-2 weights from HuggingFace: a name in PRETRAINED (transformers downloads it once and caches it) or a
        folder written by save_pretrained(). HuggingFace stores each projection as a Conv1D, weight (in, out), with
        query, key and value fused in c_attn (in, 3 in): they are transposed and split into this model's layers."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("GPT.from_pretrained needs transformers: pip install transformers") from None
        try:
            hf = GPT2LMHeadModel.from_pretrained(name)
        except OSError as e:  # an unknown name, or offline before the first download
            reason = (str(e).splitlines() or [""])[0][:160]
            raise OSError(f"cannot load GPT-2 weights {name!r} ({reason}); the names are {list(PRETRAINED)} (they "
                          f"download once, so run once online) or a folder written by save_pretrained()") from None
        c = hf.config
        if c.activation_function != "gelu_new" or (c.n_inner or 4 * c.n_embd) != 4 * c.n_embd:
            raise ValueError(f"{name}: this GPT has the tanh GELU and a 4x MLP; the checkpoint has "
                             f"{c.activation_function} and n_inner={c.n_inner}")
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                              n_embd=c.n_embd, dropout=dropout, bias=True))
        hf_weights = hf.state_dict()
        ours = {"wte.weight": hf_weights["transformer.wte.weight"], "wpe.weight": hf_weights["transformer.wpe.weight"],
                "ln_f.weight": hf_weights["transformer.ln_f.weight"], "ln_f.bias": hf_weights["transformer.ln_f.bias"]}
        for i in range(c.n_layer):
            hf_block = {k.split(f"transformer.h.{i}.", 1)[1]: v for k, v in hf_weights.items()
                        if k.startswith(f"transformer.h.{i}.")}
            for ln in ("ln_1", "ln_2"):
                ours.update({f"h.{i}.{ln}.{p}": hf_block[f"{ln}.{p}"] for p in ("weight", "bias")})
            qkv_weight = hf_block["attn.c_attn.weight"].t().chunk(3)  # (C, 3C) -> 3 x (C, C), as (out, in)
            qkv_bias = hf_block["attn.c_attn.bias"].chunk(3)
            for proj, weight, bias in zip(("query", "key", "value"), qkv_weight, qkv_bias):
                ours[f"h.{i}.attn.{proj}.weight"], ours[f"h.{i}.attn.{proj}.bias"] = weight, bias
            for ours_name, hf_name in (("attn.output", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                                       ("mlp.down", "mlp.c_proj")):
                ours[f"h.{i}.{ours_name}.weight"] = hf_block[f"{hf_name}.weight"].t()  # Conv1D (in, out) -> (out, in)
                ours[f"h.{i}.{ours_name}.bias"] = hf_block[f"{hf_name}.bias"]
        ours["lm_head.weight"] = ours["wte.weight"]  # tied, as in GPT-2
        model.load_state_dict(ours)
        return model

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW over the trainable parameters only. Weight decay applies to the ordinary weight matrices (of
        nn.Linear / nn.Embedding modules), not to adapters, norms or biases."""
        ordinary = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) in ordinary], "weight_decay": weight_decay},
                  {"params": [p for p in trainable if id(p) not in ordinary], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas,
                                 fused=device_type == "cuda")

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Append max_new_tokens tokens to idx (B, T). temperature=0 decodes greedily. While the sequence fits the
        context, each step feeds only the new token and reuses the cached keys and values of the others."""
        caches = None
        for _ in range(max_new_tokens):
            if caches is not None and idx.shape[1] <= self.config.block_size:
                logits, _ = self(idx[:, -1:], caches=caches)
            else:  # the first step, or a sequence longer than the context: (re)compute the cropped window
                caches = [{} for _ in self.h]
                logits, _ = self(idx[:, -self.config.block_size:], caches=caches)
            logits = logits[:, -1, :]  # (B, vocab)
            if temperature == 0:
                idx_next = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, -1:]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def setup_device(device: str = "auto", dtype: str = "auto"):
    """Device and precision, decided in one place for every script: (device, autocast context, dtype name)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(device)
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cuda":  # TF32 for the float32 matmuls left outside autocast
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.type, dtype=getattr(torch, dtype))
    return device, ctx, dtype
