"""
LoRA and MoRA adapters for any linear layer, with exact merge and ReLoRA / ReMoRA restarts.

  LoRA (Hu et al. 2021)                        MoRA (Jiang et al. 2024, arXiv 2405.12130, §4)

  h = W0 x + (alpha/r) B A x                   h = W0 x + f_decomp(M f_comp(x))

  x --+--------------> W0 -----+               x --+------------------------------> W0 -----+
      |                        |                   |                                         |
      +--> A --> B --> *a/r -> + --> h             +--> f_comp --> M --> f_decomp ---------> + --> h
          r x in  out x r                               in -> r^   r^xr^   r^ -> out
          kaiming zeros                                 (fixed)    zeros   (fixed)

  trainable: r (in + out)                      trainable: r^2  with  r^ = round(sqrt((in + out) r))
  rank(dW) <= r                                rank(dW) up to min(in, out)   (r^ rounded down to even for "rotate")

Every map is linear, so the update is a real (out, in) matrix dW whose column i is the adapter path applied to the
unit input e_i: delta_weight() builds it so, through the operators forward() runs, and merge() adds it to W0.
Read top down: r^, the compressions, the adapters; then the engineering, and the model-level helpers.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def r_hat(in_features: int, out_features: int, r: int, even: bool = False) -> int:
    """Side of MoRA's square M with the budget of a rank-r LoRA: r^2 ~ r (in + out), rounded to the nearest integer
    as in the authors' code (the paper floors: 768 x 768 at r=8, sqrt(12288) = 110.9 gives 111, not 110)."""
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    size = int(math.sqrt((in_features + out_features) * r) + 0.5)
    return size // 2 * 2 if even else size  # rotation pairs dimension j with j + r^/2


# --- MoRA's compressions: fixed linear maps around M

class Compression(nn.Module):
    """MoRA's parameter-free maps around M, which acts on the last dimension of every block in between:
        f_comp    (..., in)              -> (..., blocks, r^)
        f_decomp  (..., blocks, r^)      -> (..., out)
    A new compression subclasses this and defines the two maps (set even_r_hat if r^ must be even); MoRALinear builds
    dW, merges and restarts from them alone. On the dense route (small layers), f_comp sees the identity matrix."""

    even_r_hat = False

    def __init__(self, in_features: int, out_features: int, r_hat: int):
        super().__init__()
        self.in_features, self.out_features, self.r_hat = in_features, out_features, r_hat


def cycle(x: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length), position j reads x_(j mod n): pads by wrapping around (as the authors), or cuts."""
    repeats, rest = divmod(length, x.shape[-1])
    return torch.cat([x] * repeats + [x[..., :rest]], dim=-1) if repeats else x[..., :rest]


def fold(y: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length): output j sums y_j, y_(j + length), y_(j + 2 length), ... (zero-padded)."""
    folds = -(-y.shape[-1] // length)
    return F.pad(y, (0, folds * length - y.shape[-1])).unflatten(-1, (folds, length)).sum(-2)


class Truncate(Compression):
    """Truncation (§4): f_comp keeps the first r^ input features (wrapping around to feature 0 when r^ > in),
    f_decomp pads M's r^ outputs with zeros (and folds them when r^ > out)."""

    def f_comp(self, x):
        return cycle(x, self.r_hat).unsqueeze(-2)  # (..., 1, r^)

    def f_decomp(self, y):
        return fold(y.squeeze(-2), self.out_features)  # (..., out)


class Share(Compression):
    """Sharing (Eq. 6): f_comp sums groups of features, feature i joining group i mod r^ (authors' code), f_decomp
    repeats M's outputs (output j reads group j mod r^). The input is wrapped around to a multiple of r^, so when r^
    does not divide it the first features count twice (128 -> r^ = 45: features 0-6 are in two groups)."""

    def f_comp(self, x):
        per_group = math.ceil(self.in_features / self.r_hat)
        return cycle(x, per_group * self.r_hat).unflatten(-1, (per_group, self.r_hat)).sum(-2, keepdim=True)

    def f_decomp(self, y):
        return cycle(y.squeeze(-2), self.out_features)  # (..., out)


class ShareContiguous(Compression):
    """Sharing with contiguous groups: group g sums features g n ... g n + n - 1 (n = ceil(in / r^); the input
    wrapped around as in Share, so the last group may re-read the first features), and output j reads group
    floor(j r^ / out), so each group feeds a run of consecutive outputs."""

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
        self.register_buffer("cos", angles.cos(), persistent=False)  # buffers: they follow .to(device, dtype)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def f_comp(self, x):
        blocks, half = super().f_comp(x), self.r_hat // 2  # (..., n, r^)
        turned = torch.cat((-blocks[..., half:], blocks[..., :half]), dim=-1)  # pair (j, j + r^/2) -> (-x2, x1)
        return blocks * self.cos.to(x.dtype) + turned * self.sin.to(x.dtype)  # R_b x_b


COMPRESSIONS = {"truncate": Truncate, "share": Share, "share_contiguous": ShareContiguous, "decouple": Decouple,
                "rotate": Rotate}


# --- The adapters

class AdapterLinear(nn.Module):
    """What LoRA and MoRA share: a frozen base layer W0 plus an update dW, with merge / unmerge / restart.
    Subclasses define adapter_forward(x) = dW x (for x of any dtype) and reset_adapter()."""

    def __init__(self, base: nn.Module, dropout: float, dense: bool | None):
        super().__init__()
        if not isinstance(base, nn.Linear) and not is_conv1d(base):
            raise TypeError(f"adapters wrap an nn.Linear or a transformers Conv1D, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.out_features, self.in_features = self.base_weight.shape
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on the adapter path only (loralib)
        if dense and dropout > 0:
            raise ValueError("dense=True applies W0 + dW in one matmul, so it cannot drop out the adapter path "
                             "alone; use dropout=0 or dense=False")
        small = self.in_features * self.out_features <= DENSE_MAX_WEIGHTS  # dense=None: the route by size
        self.dense = dropout == 0 and small if dense is None else dense
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.merged:
            return self.base(x)
        if self.dense:  # the same h in one matmul with W0 + dW: cheaper for small layers than the operators
            return F.linear(x, self.weight, self.bias)
        return self.base(x) + self.adapter_forward(self.dropout(x))  # h = W0 x + dW x

    def delta_weight(self) -> torch.Tensor:
        """dW (out, in): column i is the adapter path applied to the unit input e_i. Differentiable: the dense route
        trains through it. In at least float32, so that a bf16 merge rounds once, not twice."""
        dtype = torch.promote_types(self.base_weight.dtype, torch.float32)
        return self.adapter_forward(torch.eye(self.in_features, dtype=dtype, device=self.base_weight.device)).t()

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + dW. Refuses a non-finite update and leaves W0 untouched then."""
        if self.merged:
            return
        if not all(torch.isfinite(p).all() for p in self.adapter_parameters()):  # finite ones give a finite dW
            raise ValueError(f"{type(self).__name__}.merge(): the update has inf/nan values; W0 was left unchanged")
        self.add_to_base(1.0)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - dW (exact up to the rounding of W0's dtype)."""
        if self.merged:
            self.add_to_base(-1.0)
            self.merged = False

    @torch.no_grad()
    def restart(self) -> None:
        """ReLoRA / ReMoRA: fold this cycle's update into W0 for good, then start a fresh adapter (output unchanged)."""
        self.merge()
        self.merged = False
        self.reset_adapter()

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    # Engineering from here on: W0 of HuggingFace's transposed Conv1D, W0 + dW for the dense route and for code that
    # reads .weight directly (torch's fused attention), dtypes in a merge, and the merged flag in the state dict.
    def add_to_base(self, sign: float) -> None:
        """W0 += sign * dW in place (a Conv1D's through its transposed view), with dW in float32 also inside a bf16
        autocast region, rounded once to W0's dtype."""
        with torch.autocast(self.base_weight.device.type, enabled=False):
            self.base_weight.copy_(self.base_weight + sign * self.delta_weight())

    @property
    def base_weight(self) -> torch.Tensor:  # (out, in), a view
        return self.base.weight.t() if is_conv1d(self.base) else self.base.weight

    @property
    def weight(self) -> torch.Tensor:  # W0 + dW, (out, in)
        return self.base_weight if self.merged else self.base_weight + self.delta_weight().to(self.base_weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def get_extra_state(self) -> dict:  # a merged W0 loaded into a fresh module must not be updated twice
        return {"merged": self.merged}

    def set_extra_state(self, state: dict) -> None:
        self.merged = bool(state["merged"])


class LoRALinear(AdapterLinear):
    """h = W0 x + (alpha / r) B A x, with A kaiming-uniform and B zero, so training starts from the base model."""

    def __init__(self, base: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
                 dense: bool | None = None):
        super().__init__(base, dropout, dense)
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        self.r, self.alpha = r, 2.0 * r if alpha is None else float(alpha)  # default: the paper's r=8, alpha=16
        self.scaling = self.alpha / r
        self.lora_A = nn.Parameter(self.base_weight.new_empty(r, self.in_features))
        self.lora_B = nn.Parameter(self.base_weight.new_empty(self.out_features, r))
        self.reset_adapter()

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., r) -> (..., out)
        return F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling

    def reset_adapter(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        nn.init.zeros_(self.lora_B)


class MoRALinear(AdapterLinear):
    """h = W0 x + f_decomp(M f_comp(x)) (§4) with one trainable square M (r^ x r^, zeros), no alpha scaling.

    compress: a name in COMPRESSIONS, or any callable (in, out, r_hat) -> Compression (a subclass, a partial of one).
    ReMoRA's restart() permutes the input and output features at random around the compression (in_perm, out_perm;
    the identity at first), so each cycle's update lands on new rows and columns and the accumulated rank grows."""

    def __init__(self, base: nn.Module, r: int, compress="rotate", dropout: float = 0.0, dense: bool | None = None):
        super().__init__(base, dropout, dense)
        factory = COMPRESSIONS.get(compress) if isinstance(compress, str) else compress
        if not callable(factory):
            raise ValueError(f"compress must be one of {list(COMPRESSIONS)} or a callable (in, out, r_hat) -> "
                             f"Compression, got {compress!r}")
        even = getattr(getattr(factory, "func", factory), "even_r_hat", False)  # a class, or a partial of one
        self.r, self.r_hat = r, r_hat(self.in_features, self.out_features, r, even=even)
        self.compression = factory(self.in_features, self.out_features, self.r_hat)
        self.compression.to(self.base_weight.device, self.base_weight.dtype)
        self.M = nn.Parameter(self.base_weight.new_zeros(self.r_hat, self.r_hat))
        self.register_buffer("in_perm", torch.arange(self.in_features, device=self.base_weight.device))
        self.register_buffer("out_perm", torch.arange(self.out_features, device=self.base_weight.device))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        z = self.compression.f_comp(x.index_select(-1, self.in_perm))  # (..., blocks, r^)
        y = z @ self.M.to(z.dtype).t()  # (..., blocks, r^): M applied to every block
        return self.compression.f_decomp(y).index_select(-1, self.out_perm)  # (..., out)

    def reset_adapter(self) -> None:
        """M <- 0 and, for ReMoRA, new random permutations of the input and output features (torch's global RNG)."""
        nn.init.zeros_(self.M)
        self.in_perm.copy_(torch.randperm(self.in_features))
        self.out_perm.copy_(torch.randperm(self.out_features))


# --- Engineering: none of it changes a number (each piece is tested equal to the plain form above)

# Up to this many weights (512 x 512), forward() builds W0 + dW from the identity once per call and applies it in
# one matmul: cheaper than running the operators on every token there (docs/performance.md), and the same numbers.
DENSE_MAX_WEIGHTS = 1 << 18


def is_conv1d(module: nn.Module) -> bool:  # HuggingFace GPT-2's layer: y = x @ weight + bias, weight (in, out)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


# --- Model-level helpers: they work on any nn.Module, e.g. model.py's GPT or a HuggingFace GPT-2 / LLaMA.

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
    matches = lambda name, target: name == target or name.endswith("." + target)
    unmatched = [t for t in targets if not any(matches(name, t) for name in linears)]
    if unmatched:
        known = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(f"target(s) {unmatched} match no linear layer in the model; its linear layers are named "
                         f"{known}")
    model.requires_grad_(False)
    for name, linear in linears.items():
        if any(matches(name, t) for t in targets):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, ADAPTERS[method](linear, r, **kwargs))
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Merge every adapter and put its base layer back: the state dict then has the model's own keys again (for a
    HuggingFace model, what save_pretrained expects)."""
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
    """Load adapter tensors into a model with the same adapters, unmerged; a key or a shape that does not fit (another
    rank's tensors) is an error that names it."""
    own, merged = adapter_state_dict(model).keys(), [n for n, layer in adapter_layers(model).items() if layer.merged]
    missing, unexpected = sorted(own - state_dict.keys()), sorted(state_dict.keys() - own)
    if merged or missing or unexpected:
        raise ValueError(f"adapter state dict does not fit this model: missing {missing}, unexpected {unexpected}, "
                         f"merged layers (unmerge them first) {merged}")
    model.load_state_dict(state_dict, strict=False)  # strict=False: the base weights are not in it


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
