"""
LoRA and MoRA adapters for any linear layer (nn.Linear, or the Conv1D of HuggingFace's GPT-2), with exact merge
and ReLoRA / ReMoRA restarts.

  LoRA (Hu et al. 2021)                        MoRA (Jiang et al. 2024, arXiv 2405.12130, §4)

  h = W0 x + (alpha/r) B A x                   h = W0 x + f_decomp(M f_comp(x))

  x --+--------------> W0 -----+               x --+------------------------------> W0 -----+
      |                        |                   |                                         |
      +--> A --> B --> *a/r -> + --> h             +--> f_comp --> M --> f_decomp ---------> + --> h
          r x in  out x r                               in -> r^   r^xr^   r^ -> out
          kaiming zeros                                 (fixed)    zeros   (fixed)

  trainable: r (in + out)                      trainable: r^2  with  r^ = round(sqrt((in + out) r))
  rank(dW) <= r                                rank(dW) up to min(in, out)   (r^ rounded down to even for "rotate")

MoRA's f_comp and f_decomp are fixed linear maps; each compression below is a class that defines the two:
  truncate          keep the first r^ inputs; pad M's output with zeros.
  share             sum groups of inputs, repeat M's outputs (Eq. 6); feature i -> group i mod r^ (authors' code).
  share_contiguous  the same with groups of consecutive features, and runs of consecutive outputs.
  decouple          cut the input into ceil(in / r^) blocks of r^ and apply M to every block.
  rotate            decouple, with block b rotated RoPE-style before M (Eq. 9).

Every map here is linear, so the update is a real (out, in) matrix dW: column i is the adapter path applied to the
unit input e_i. delta_weight() builds it that way, through the same f_comp, M and f_decomp as forward(), and merge()
adds it into W0. Departures from the authors' code (kongds/MoRA), each tested: decouple / rotate with in > out fold
the block outputs onto the output instead of ignoring the inputs past ceil(out / r^) blocks; ReMoRA permutes the
features at random at each restart (the authors alternate two groupings, so the rank stops growing); every shape
works. For in <= out, share and rotate match the authors' operators number for number.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def r_hat(in_features: int, out_features: int, r: int, even: bool = False) -> int:
    """Side of MoRA's square M with the budget of a rank-r LoRA: r^2 ~ r (in + out). The paper writes
    r^ = floor(sqrt((in + out) r)); like the authors' code, this rounds to the nearest integer instead
    (768 x 768 at r=8: sqrt(12288) = 110.9 gives 111, not 110)."""
    for name, value in (("in_features", in_features), ("out_features", out_features), ("r", r)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    size = int(math.sqrt((in_features + out_features) * r) + 0.5)
    return size // 2 * 2 if even else size  # rotation pairs dimension j with j + r^/2


# ----------------------------------------------------------------------------------------------------------------------
# The adapters

DENSE_MAX_WEIGHTS = 1 << 18  # up to this many weights (512 x 512), forward() uses one matmul with W0 + dW
BLOCK_ELEMENTS = 1 << 20  # merge() builds dW a block of columns of about this many weights at a time


class AdapterLinear(nn.Module):
    """What LoRA and MoRA share: a frozen base layer W0, the update dW, merge / unmerge / restart.

    Subclasses define adapter_forward(x) = h - W0 x (for x of any dtype: dW is built in float32 for a bf16 layer)
    and reset_adapter(). forward() takes one of two routes to the same numbers (tested): base(x) + adapter_forward(x),
    the method as the papers write it, or F.linear(x, W0 + dW), one matmul, cheaper for small layers (`dense`; None
    picks by size). Both run the adapter's own operators: dW is adapter_forward() of the identity."""

    def __init__(self, base: nn.Module, dropout: float, dense: bool | None):
        super().__init__()
        if not isinstance(base, nn.Linear) and not is_conv1d(base):
            raise TypeError(f"adapters wrap an nn.Linear or a transformers Conv1D, got {type(base).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dense and dropout > 0:
            raise ValueError("dense=True applies W0 + dW in one matmul, so it cannot drop out the adapter path alone; "
                             "use dropout=0 or dense=False")
        self.base = base.requires_grad_(False)
        self.fan_in_fan_out = is_conv1d(base)  # Conv1D stores its weight as (in, out): y = x @ weight + bias
        self.out_features, self.in_features = self.base_weight.shape
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dense is None:
            dense = dropout == 0 and self.in_features * self.out_features <= DENSE_MAX_WEIGHTS
        self.dense = dense
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.merged:
            return self.base(x)
        if self.dense:
            return F.linear(x, self.weight, self.bias)
        return self.base(x) + self.adapter_forward(self.dropout(x))

    def delta_weight(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Columns start:stop of dW (all by default), (out, stop - start), in at least float32: column i is the
        adapter path applied to the unit input e_i. Differentiable: the dense route trains through it."""
        stop = self.in_features if stop is None else stop
        dtype = torch.promote_types(self.base_weight.dtype, torch.float32)  # a bf16 merge must not round twice
        eye = torch.zeros(stop - start, self.in_features, dtype=dtype, device=self.base_weight.device)
        eye.diagonal(start).fill_(1)  # rows e_start ... e_(stop-1)
        return self.adapter_forward(eye).t()

    @property
    def base_weight(self) -> torch.Tensor:
        """W0 as (out, in): the base layer's weight, or a transposed view of a Conv1D's."""
        return self.base.weight.t() if self.fan_in_fan_out else self.base.weight

    @property
    def weight(self) -> torch.Tensor:
        """W0 + dW (out, in): the weight this layer applies, also for code that reads `.weight` directly."""
        return self.base_weight if self.merged else self.base_weight + self.delta_weight().to(self.base_weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + dW. Refuses a non-finite update and leaves W0 untouched then."""
        if self.merged:
            return
        if not all(torch.isfinite(p).all() for p in self.adapter_parameters()):  # finite ones give a finite dW
            raise ValueError(f"{type(self).__name__}.merge(): the update has inf/nan values; W0 was left unchanged")
        self.add_delta(1.0)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - dW (exact up to the rounding of W0's dtype)."""
        if self.merged:
            self.add_delta(-1.0)
            self.merged = False

    def add_delta(self, sign: float) -> None:
        """W0 += sign * dW in place, a block of columns at a time, each rounded once to W0's dtype."""
        weight = self.base_weight
        step = max(1, BLOCK_ELEMENTS // max(self.in_features, self.out_features))
        with torch.autocast(weight.device.type, enabled=False):  # dW in float32 also inside an autocast region
            for start in range(0, self.in_features, step):
                columns = weight[:, start:start + step]
                columns.copy_(columns + sign * self.delta_weight(start, start + columns.shape[1]))

    @torch.no_grad()
    def restart(self) -> None:
        """ReLoRA / ReMoRA: fold this cycle's update into W0 for good, then start a fresh adapter (output unchanged)."""
        self.merge()
        self.merged = False
        self.reset_adapter()

    # The merged flag travels with state_dict(), so a merged W0 loaded into a fresh module is not updated twice.
    def get_extra_state(self) -> dict:
        return {"merged": self.merged}

    def set_extra_state(self, state: dict) -> None:
        self.merged = bool(state["merged"])


def is_conv1d(module: nn.Module) -> bool:
    """HuggingFace's GPT-2 layer (transformers.pytorch_utils.Conv1D), recognized without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class LoRALinear(AdapterLinear):
    """h = W0 x + (alpha / r) B A x, with A kaiming-uniform and B zero, so training starts from the base model."""

    def __init__(self, base: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
                 dense: bool | None = None):
        super().__init__(base, dropout, dense)
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        self.r = r
        self.alpha = 2.0 * r if alpha is None else float(alpha)  # the paper's r=8, alpha=16
        self.scaling = self.alpha / r
        factory = dict(dtype=self.base_weight.dtype, device=self.base_weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.reset_adapter()

    def reset_adapter(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        nn.init.zeros_(self.lora_B)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., r) -> (..., out)
        return F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}"


class Compression(nn.Module):
    """MoRA's fixed linear maps around M. M acts on the last dimension of every block in between:

        f_comp    (..., in)              -> (..., n_blocks, r^)
        f_decomp  (..., n_blocks, r^)    -> (..., out)

    A new compression subclasses this and defines the two maps (and n_blocks, if not 1); MoRALinear builds dW,
    merges and restarts from them alone. Set even_r_hat if r^ must be even."""

    even_r_hat = False

    def __init__(self, in_features: int, out_features: int, r_hat: int):
        super().__init__()
        self.in_features, self.out_features, self.r_hat = in_features, out_features, r_hat
        self.n_blocks = 1

    def f_comp(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f_decomp(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def cycle(x: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length): position j reads x_(j mod n). Pads by wrapping around (as the authors pad the
    input), repeats, or truncates."""
    repeats, rest = divmod(length, x.shape[-1])
    return torch.cat([x] * repeats + [x[..., :rest]], dim=-1) if repeats else x[..., :rest]


def fold(y: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length): output j sums y_j, y_(j + length), y_(j + 2 length), ... (zero-padded)."""
    folds = -(-y.shape[-1] // length)
    return F.pad(y, (0, folds * length - y.shape[-1])).unflatten(-1, (folds, length)).sum(-2)


class Truncate(Compression):
    """Truncation (§4): f_comp keeps the first r^ input features, f_decomp pads M's r^ outputs with zeros."""

    def f_comp(self, x):
        return cycle(x, self.r_hat).unsqueeze(-2)  # (..., 1, r^)

    def f_decomp(self, y):
        return fold(y.squeeze(-2), self.out_features)  # (..., out); folded when r^ > out


class Share(Compression):
    """Sharing (Eq. 6): f_comp sums the features of each group (feature i joins group i mod r^), f_decomp repeats
    M's outputs (output j reads group j mod r^)."""

    def f_comp(self, x):
        per_group = math.ceil(self.in_features / self.r_hat)  # the input, wrapped around, is per_group blocks of r^
        return cycle(x, per_group * self.r_hat).unflatten(-1, (per_group, self.r_hat)).sum(-2, keepdim=True)

    def f_decomp(self, y):
        return cycle(y.squeeze(-2), self.out_features)  # (..., out)


class ShareContiguous(Compression):
    """Sharing with contiguous groups: group g sums features g n ... g n + n - 1 (n = ceil(in / r^)), and output j
    reads group floor(j r^ / out), so each group feeds a run of consecutive outputs."""

    def f_comp(self, x):
        per_group = math.ceil(self.in_features / self.r_hat)
        return cycle(x, per_group * self.r_hat).unflatten(-1, (self.r_hat, per_group)).sum(-1).unsqueeze(-2)

    def f_decomp(self, y):
        groups = torch.arange(self.out_features, device=y.device) * self.r_hat // self.out_features
        return y.squeeze(-2).index_select(-1, groups)  # (..., out)


class Decouple(Compression):
    """Decoupling: f_comp cuts the input (wrapped around to a multiple of r^) into n = ceil(in / r^) blocks, so M
    acts on each; f_decomp concatenates the n r^ block outputs and repeats or truncates them to out (the authors),
    or, when in > out, folds them onto out so that no input block is dropped."""

    def __init__(self, in_features, out_features, r_hat):
        super().__init__(in_features, out_features, r_hat)
        self.n_blocks = math.ceil(in_features / r_hat)

    def f_comp(self, x):
        return cycle(x, self.n_blocks * self.r_hat).unflatten(-1, (self.n_blocks, self.r_hat))  # (..., n, r^)

    def f_decomp(self, y):
        y = y.flatten(-2)  # (..., n r^)
        return fold(y, self.out_features) if self.in_features > self.out_features else cycle(y, self.out_features)


class Rotate(Decouple):
    """Rotation (Eq. 9): decoupling with block b rotated like RoPE before M, so block b sees M R_b: dimensions j and
    j + r^/2 turn by the angle b * 10000^(-2j / r^)."""

    even_r_hat = True

    def __init__(self, in_features, out_features, r_hat):
        super().__init__(in_features, out_features, r_hat)
        inv_freq = 10000.0 ** (-torch.arange(0, r_hat, 2, dtype=torch.float64) / r_hat)  # (r^/2,)
        angles = torch.outer(torch.arange(self.n_blocks, dtype=torch.float64), inv_freq).repeat(1, 2)  # (n, r^)
        self.register_buffer("cos", angles.cos(), persistent=False)  # cast with the layer
        self.register_buffer("sin", angles.sin(), persistent=False)

    def f_comp(self, x):
        blocks = super().f_comp(x)  # (..., n, r^)
        half = self.r_hat // 2
        turned = torch.cat((-blocks[..., half:], blocks[..., :half]), dim=-1)  # pair (j, j + r^/2) -> (-x2, x1)
        return blocks * self.cos.to(x.dtype) + turned * self.sin.to(x.dtype)  # R_b x_b


COMPRESSIONS = {"truncate": Truncate, "share": Share, "share_contiguous": ShareContiguous, "decouple": Decouple,
                "rotate": Rotate}


class MoRALinear(AdapterLinear):
    """h = W0 x + f_decomp(M f_comp(x)) (§4) with one trainable square M (r^ x r^, zeros), no alpha scaling.

    compress: a name in COMPRESSIONS, or any Compression subclass. ReMoRA's restart() permutes the input and output
    features at random before f_comp and after f_decomp (in_perm, out_perm; the identity at first), so each cycle's
    update lands on new rows and columns and the rank of the accumulated update keeps growing."""

    def __init__(self, base: nn.Module, r: int, compress: str | type = "rotate", dropout: float = 0.0,
                 dense: bool | None = None):
        super().__init__(base, dropout, dense)
        kind = COMPRESSIONS.get(compress) if isinstance(compress, str) else compress
        if not (isinstance(kind, type) and issubclass(kind, Compression)):
            raise ValueError(f"compress must be one of {list(COMPRESSIONS)} or a Compression subclass, "
                             f"got {compress!r}")
        self.r = r
        self.r_hat = r_hat(self.in_features, self.out_features, r, even=kind.even_r_hat)
        if self.r_hat < (2 if kind.even_r_hat else 1):
            raise ValueError(f"r={r} gives r_hat={self.r_hat} for a {self.in_features}->{self.out_features} layer; "
                             f"raise r")
        factory = dict(dtype=self.base_weight.dtype, device=self.base_weight.device)
        self.compression = kind(self.in_features, self.out_features, self.r_hat).to(**factory)
        self.M = nn.Parameter(torch.zeros(self.r_hat, self.r_hat, **factory))
        self.register_buffer("in_perm", torch.arange(self.in_features, device=factory["device"]))
        self.register_buffer("out_perm", torch.arange(self.out_features, device=factory["device"]))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        z = self.compression.f_comp(x.index_select(-1, self.in_perm))  # (..., n_blocks, r^)
        y = z @ self.M.to(z.dtype).t()  # (..., n_blocks, r^): M applied to every block
        return self.compression.f_decomp(y).index_select(-1, self.out_perm)  # (..., out)

    def reset_adapter(self) -> None:
        """M <- 0 and, for ReMoRA, new random permutations of the input and output features (torch's global RNG)."""
        nn.init.zeros_(self.M)
        self.in_perm.copy_(torch.randperm(self.in_features))
        self.out_perm.copy_(torch.randperm(self.out_features))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, r_hat={self.r_hat}, "
                f"compress={type(self.compression).__name__}")


# ----------------------------------------------------------------------------------------------------------------------
# Model-level helpers: they work on any nn.Module, e.g. model.py's GPT or a HuggingFace GPT-2 / LLaMA.

ADAPTERS = {"lora": LoRALinear, "mora": MoRALinear}


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def add_adapters(model: nn.Module, method: str, r: int, targets, **kwargs) -> nn.Module:
    """Wrap every linear layer (nn.Linear or Conv1D) whose dotted name is, or ends with, one of `targets` ("query",
    "mlp.up", "q_proj", ...) in a LoRALinear / MoRALinear, and freeze every other parameter. kwargs go to the
    adapter (alpha, compress, dropout, dense)."""
    if method not in ADAPTERS:
        raise ValueError(f"method must be one of {sorted(ADAPTERS)}, got {method!r}")
    if adapter_layers(model):
        raise ValueError("this model already has adapters; build a fresh model to add new ones")
    targets = [targets] if isinstance(targets, str) else list(targets)
    linears = {name: m for name, m in model.named_modules() if name and (isinstance(m, nn.Linear) or is_conv1d(m))}

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(name, t) for name in linears)]
    if unmatched:
        known = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(f"target(s) {unmatched} match no linear layer in the model; its linear layers are named "
                         f"{known}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in linears.items():
        if any(matches(name, t) for t in targets):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ADAPTERS[method](linear, r, **kwargs))
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    for layer in adapter_layers(model).values():
        layer.merge()
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Merge every adapter and put its base layer back: the state dict then has the model's original keys and
    loads into the original model class (for a HuggingFace model, what save_pretrained expects)."""
    for name, layer in adapter_layers(model).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (LoRA's A and B; MoRA's M and its permutations), keyed as in model.state_dict()."""
    return {f"{name}.{key}": tensor
            for name, layer in adapter_layers(model).items()
            for key, tensor in layer.state_dict().items()
            if not key.startswith("base.") and key != "_extra_state"}


def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into a model that has the same adapters (unmerged), naming any key that does not fit."""
    own = adapter_state_dict(model)
    missing, unexpected = sorted(own.keys() - state_dict.keys()), sorted(state_dict.keys() - own.keys())
    if missing or unexpected:
        raise KeyError(f"adapter state dict does not fit this model: missing {missing}, unexpected {unexpected}")
    wrong = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if state_dict[k].shape != v.shape]
    if wrong:
        raise ValueError(f"adapter shapes differ (saved vs model), was it saved with another rank? {wrong}")
    merged = [name for name, layer in adapter_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(f"unmerge these layers before loading adapters into them: {merged}")
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state_dict[key])


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def worked_example() -> str:
    """dW of an 8 x 8 layer with r^ = 4 (r=1) for every compression, M the circulant [[1, 2, 3, 4], [4, 1, 2, 3], ...]
    (rank 4): where M's copies land, and the rank each compression reaches. Two matrices side by side."""
    blocks = []
    for name in COMPRESSIONS:
        layer = MoRALinear(nn.Linear(8, 8, bias=False), r=1, compress=name, dense=False)
        with torch.no_grad():
            layer.M.copy_(torch.stack([torch.arange(1.0, 5.0).roll(i) for i in range(4)]))
        delta = layer.delta_weight()
        title = f"{name}: rank {torch.linalg.matrix_rank(delta.double()).item()}"
        blocks.append([f"{title:<40}"] + ["".join(f"{v:5.1f}" for v in row) for row in delta.tolist()])
    pairs = [blocks[i:i + 2] for i in range(0, len(blocks), 2)]
    return "\n\n".join("\n".join("   ".join(lines).rstrip() for lines in zip(*pair)) for pair in pairs)


if __name__ == "__main__":  # python mora.py: the worked example and the table of budgets in the README
    print(worked_example() + "\n")
    print("| in x out | r | LoRA: params, max rank | MoRA share: r^, params, max rank "
          "| MoRA rotate: r^, params, max rank |")
    print("|---|---|---|---|---|")
    for n_in, n_out in [(768, 768), (4096, 4096), (4096, 11008)]:
        for r in (8, 256):
            share, rotate = r_hat(n_in, n_out, r), r_hat(n_in, n_out, r, even=True)
            print(f"| {n_in} x {n_out} | {r} | {r * (n_in + n_out):,}, {r} | {share}, {share ** 2:,}, {share} "
                  f"| {rotate}, {rotate ** 2:,}, {min(n_in, n_out)} |")
