"""
LoRA and MoRA adapters for any nn.Linear, with exact merge and ReLoRA / ReMoRA restarts.

  LoRA (Hu et al. 2021)                        MoRA (Jiang et al. 2024, arXiv 2405.12130, §4)

  h = W x + (alpha/r) B A x                    h = W x + f_decomp(M f_comp(x))

  x --+--------------> W ------+               x --+------------------------------> W ------+
      |                        |                   |                                         |
      +--> A --> B --> *a/r -> + --> h             +--> f_comp --> M --> f_decomp ---------> + --> h
          r x in  out x r                               in -> r^   r^xr^   r^ -> out
          kaiming zeros                                 (fixed)    zeros   (fixed)

  trainable: r * (in + out)                    trainable: r^2  with  r^ = floor(sqrt((in + out) * r) + 1/2)
  rank(dW) <= r                                rank(dW) up to min(in, out)   (r^ rounded down to even for "rotate")

Both adapters keep the frozen layer as `.base`, compute their update as a real matrix in `delta_weight()` (the one
source of truth: forward(x) == F.linear(x, base.weight + delta_weight(), base.bias)), and can fold it into the base
weight with `merge()`. `restart()` is the ReLoRA step: merge, then start a fresh adapter on top.

MoRA's f_comp / f_decomp are fixed linear maps, chosen by `compress`:
  truncate  keep the first r^ inputs; pad the output with zeros.
  share     sum groups of inputs, repeat the outputs (Eq. 6). Groups are strided (feature i -> group i mod r^) as in the
            authors' code, or contiguous (runs of consecutive features).
  decouple  cut the input into ceil(in/r^) blocks of r^, apply M to every block, concatenate.
  rotate    decouple, with block b rotated RoPE-style before M (Eq. 9): angles b * 10000^(-2j/r^), dimension j paired
            with j + r^/2.
When in is not a multiple of r^ the input is padded by wrapping around (feature s mod in fills slot s), as the authors
do. Where this file departs from the authors' code (kongds/MoRA, peft-mora/.../lora/layer.py):
  * in > out, decouple/rotate: the authors keep only the first ceil(out/r^) output blocks, so every input block past
    them is ignored (LLaMA-2-7B's down_proj at r=8: 6,832 of 11,008 inputs). Here the block outputs are folded onto
    the output (output j sums block-output positions j, j + out, j + 2 out, ...), so every input feature counts.
  * ReMoRA: the authors alternate two groupings, so the accumulated rank stops growing after two merges. Here every
    restart draws a fresh random permutation of the input and output features, so the rank keeps growing.
  * dW is built with index operations (no Python loop over features) and merge() adds it into W in place, block by
    block; every shape works (also r^ >= in), and the rotation tables are buffers that follow .to(device / dtype).
For in <= out, "share" (strided) and "rotate" match the authors' operators number for number.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def r_hat(in_features: int, out_features: int, r: int, even: bool = False) -> int:
    """Side of MoRA's square matrix with the parameter budget of a rank-r LoRA: round(sqrt((in + out) * r))."""
    for name, value in (("in_features", in_features), ("out_features", out_features), ("r", r)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    size = int(math.sqrt((in_features + out_features) * r) + 0.5)
    return size // 2 * 2 if even else size  # rotation pairs dimension j with j + r^/2


BLOCK_ELEMENTS = 1 << 20  # dW is built and merged in blocks of rows of about this many weights

# Up to this many weights (e.g. 512 x 512) a layer applies W + dW in one matmul: there the adapter's own operators
# cost more time than one weight-sized matmul (bench.py measures both routes). Above it, the operators are cheaper.
DENSE_MAX_WEIGHTS = 1 << 18


class AdapterLinear(nn.Module):
    """What LoRA and MoRA share: a frozen base nn.Linear, dropout on the adapter path, merge / unmerge / restart.

    forward() has two routes to the same numbers: base(x) + adapter_forward(x), the method as the papers write it,
    or, for small layers (`dense`), F.linear(x, W + dW), which costs less there. dense=None picks by layer size.
    Subclasses define adapter_forward(x) and reset_adapter(), and give dW as compact factors (delta_factors(),
    the first carrying dW's dtype) plus add_delta_rows(acc, start, factors, sign): acc += sign * dW[start:...]."""

    def __init__(self, base: nn.Linear, dropout: float, dense: bool | None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"adapters wrap an nn.Linear, got {type(base).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dense and dropout > 0:
            raise ValueError("dense=True applies W + dW in one matmul, so it cannot drop out the adapter path alone; "
                             "use dropout=0 or dense=False")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dense is None:
            dense = dropout == 0 and base.in_features * base.out_features <= DENSE_MAX_WEIGHTS
        self.dense = dense
        self._merged = False

    @property
    def merged(self) -> bool:
        return self._merged

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, W + dW, for code that reads `.weight` directly (e.g. torch's fused
        TransformerEncoderLayer inference path)."""
        if self._merged:
            return self.base.weight
        return self.base.weight + self.delta_weight().to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self._merged:
            return self.base(x)
        if self.dense:
            return F.linear(x, self.weight, self.bias)
        return self.base(x) + self.adapter_forward(self.dropout(x))

    def compute_dtype(self, param: torch.Tensor) -> torch.dtype:
        """dW is built in at least float32, also for bf16 / fp16 adapters (a merge must not round twice)."""
        return torch.promote_types(param.dtype, torch.float32)

    def delta_weight(self) -> torch.Tensor:
        """dW (out, in), in at least float32. Built by the same code that merges, so both always agree."""
        factors = self.delta_factors()
        delta = factors[0].new_zeros(self.out_features, self.in_features)
        self.add_delta(delta, factors, 1.0)
        return delta

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + dW. Refuses a non-finite update and leaves W untouched then."""
        if self._merged:
            return
        adapter_weights = [p for name, p in self.named_parameters() if not name.startswith("base.")]
        if not all(torch.isfinite(p).all() for p in adapter_weights):  # finite ones give a finite dW (no overflow)
            raise ValueError(f"{type(self).__name__}.merge(): the update has inf/nan values; W was left unchanged")
        self.add_delta(self.base.weight, self.delta_factors(), 1.0)
        self._merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - dW (exact up to the rounding of W's dtype)."""
        if not self._merged:
            return
        self.add_delta(self.base.weight, self.delta_factors(), -1.0)
        self._merged = False

    def add_delta(self, weight: torch.Tensor, factors: tuple[torch.Tensor, ...], sign: float) -> None:
        """weight += sign * dW, a block of rows at a time, each accumulated in dW's precision and rounded once to
        weight's dtype. No weight-sized temporary: on CPU, fresh memory (the OS zero-fills every new page) costs
        several times the add itself."""
        step = max(1, BLOCK_ELEMENTS // self.in_features)
        for start in range(0, self.out_features, step):
            rows = weight[start:start + step]
            acc = rows.to(factors[0].dtype)  # `rows` itself when W already has dW's dtype
            self.add_delta_rows(acc, start, factors, sign)
            if acc is not rows:
                rows.copy_(acc)

    @torch.no_grad()
    def restart(self) -> None:
        """ReLoRA / ReMoRA: fold this cycle's update into W for good, then start a fresh adapter (output unchanged)."""
        self.merge()
        self._merged = False
        self.reset_adapter()

    # The merged flag travels with state_dict(), so a merged W loaded into a fresh module is not updated twice.
    def get_extra_state(self) -> dict:
        return {"merged": self._merged}

    def set_extra_state(self, state: dict) -> None:
        self._merged = bool(state["merged"])


class LoRALinear(AdapterLinear):
    """h = W x + (alpha / r) B A x, with A kaiming-uniform and B zero, so training starts from the base model."""

    def __init__(self, base: nn.Linear, r: int, alpha: float | None = None, dropout: float = 0.0,
                 dense: bool | None = None):
        super().__init__(base, dropout, dense)
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        self.r = r
        self.alpha = 2.0 * r if alpha is None else float(alpha)  # the paper's r=8, alpha=16
        self.scaling = self.alpha / r
        factory = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.reset_adapter()

    def reset_adapter(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        nn.init.zeros_(self.lora_B)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # (..., in) -> (..., r) -> (..., out)

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.compute_dtype(self.lora_A)
        return self.lora_B.to(dtype) * self.scaling, self.lora_A.to(dtype)  # (out, r), (r, in)

    def add_delta_rows(self, acc: torch.Tensor, start: int, factors, sign: float) -> torch.Tensor:
        scaled_B, A = factors
        return acc.addmm_(scaled_B[start:start + len(acc)], A, alpha=sign)  # dW = (alpha/r) B A

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}"


COMPRESSIONS = ("truncate", "share", "decouple", "rotate")
GROUPINGS = ("strided", "contiguous")


class MoRALinear(AdapterLinear):
    """h = W x + f_decomp(M f_comp(x)) with one trainable square matrix M (r^ x r^, zeros), no alpha scaling.

    The compression is stored as two index buffers, which is all ReMoRA needs to change:
      in_index  (n_blocks * r^,)  slot s of the padded input reads feature in_index[s]; the slots are read as
                                  n_blocks blocks of r^ (truncate: 1 block; share: the blocks are summed).
      out_index (out,)            output j reads position out_index[j] of M's output, or, where block outputs are
                                  folded (truncate, and decouple/rotate with in > out), of the folded output.
    """

    def __init__(self, base: nn.Linear, r: int, compress: str = "rotate", dropout: float = 0.0,
                 groups: str = "strided", dense: bool | None = None):
        super().__init__(base, dropout, dense)
        if compress not in COMPRESSIONS:
            raise ValueError(f"compress must be one of {COMPRESSIONS}, got {compress!r}")
        if groups not in GROUPINGS:
            raise ValueError(f"groups must be one of {GROUPINGS}, got {groups!r}")
        if groups == "contiguous" and compress != "share":
            raise ValueError(f"groups='contiguous' applies to compress='share' only, got compress={compress!r}")
        self.r, self.compress, self.groups = r, compress, groups
        self.r_hat = r_hat(self.in_features, self.out_features, r, even=compress == "rotate")
        if self.r_hat < (2 if compress == "rotate" else 1):
            raise ValueError(f"r={r} gives r_hat={self.r_hat} for a {self.in_features}->{self.out_features} layer; "
                             f"raise r")
        self.n_blocks = 1 if compress == "truncate" else math.ceil(self.in_features / self.r_hat)
        n_outputs = self.r_hat if compress == "share" else self.n_blocks * self.r_hat  # length of M's output
        self.fold = compress == "truncate" or (compress != "share" and self.in_features > self.out_features)
        self.n_folds = math.ceil(n_outputs / self.out_features) if self.fold else 1
        device = base.weight.device
        self.M = nn.Parameter(torch.zeros(self.r_hat, self.r_hat, dtype=base.weight.dtype, device=device))
        self.register_buffer("in_index", self.default_in_index().to(device))
        self.register_buffer("out_index", self.default_out_index().to(device))
        if compress == "rotate":
            cos, sin = rotation_tables(self.n_blocks, self.r_hat)
            self.register_buffer("cos", cos.to(base.weight.dtype).to(device), persistent=False)  # (n_blocks, r^)
            self.register_buffer("sin", sin.to(base.weight.dtype).to(device), persistent=False)

    def default_in_index(self) -> torch.Tensor:
        slots = torch.arange(self.n_blocks * self.r_hat)
        if self.groups == "contiguous":  # group g (column g of the blocks) = features g*n_blocks ... g*n_blocks+n-1
            slots = slots.view(self.r_hat, self.n_blocks).t().reshape(-1)
        return slots % self.in_features  # wrap-around padding

    def default_out_index(self) -> torch.Tensor:
        j = torch.arange(self.out_features)
        if self.fold:
            return j
        if self.groups == "contiguous":  # repeat-interleave: runs of about out/r^ outputs per group
            return j * self.r_hat // self.out_features
        return j % (self.r_hat if self.compress == "share" else self.n_blocks * self.r_hat)  # repeat / tile

    def reset_adapter(self) -> None:
        """M <- 0 and, for ReMoRA, new compression / decompression patterns: random feature permutations (from
        torch's global RNG) composed with the default pattern. Each cycle's dW lives on new rows and columns, so the
        rank of the accumulated update keeps growing."""
        nn.init.zeros_(self.M)
        in_perm = torch.randperm(self.in_features)
        out_perm = torch.randperm(self.out_features)
        self.in_index.copy_(in_perm[self.default_in_index()])
        self.out_index.copy_(self.default_out_index()[out_perm])

    def block_kernels(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The matrix applied to each input block, (n_blocks, r^, r^): M, or M R_b for rotate (Eq. 9).

        Rotating block b before M is the same as multiplying by M R_b, so the rotation is applied to the r^ x r^
        weights once instead of to every token: (M R_b)[:, k] = M[:, k] cos_bk + M'[:, k] sin_bk with
        M' = [M[:, r^/2:], -M[:, :r^/2]] (columns j and j + r^/2 form a rotation pair)."""
        M = self.M if dtype is None else self.M.to(dtype)
        if self.compress != "rotate":
            return M.expand(self.n_blocks, -1, -1)
        half = self.r_hat // 2
        M_rot = torch.cat((M[:, half:], -M[:, :half]), dim=1)
        cos, sin = self.cos.to(M.dtype)[:, None, :], self.sin.to(M.dtype)[:, None, :]
        return M * cos + M_rot * sin  # (n_blocks, r^, r^)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.index_select(-1, self.in_index).unflatten(-1, (self.n_blocks, self.r_hat))  # (..., n_blocks, r^)
        if self.compress == "share":
            z = blocks.sum(-2) @ self.M.t()  # (..., r^)                           Eq. 6
        elif self.compress == "rotate":
            z = torch.einsum("...bk,bok->...bo", blocks, self.block_kernels()).flatten(-2)  # (..., n_blocks*r^)  Eq. 9
        else:
            z = (blocks @ self.M.t()).flatten(-2)  # (..., n_blocks*r^)
        if self.fold:
            z = F.pad(z, (0, self.n_folds * self.out_features - z.shape[-1]))  # zero outputs past M's output
            z = z.unflatten(-1, (self.n_folds, self.out_features)).sum(-2)  # (..., out)
        return z.index_select(-1, self.out_index)  # (..., out)

    def delta_factors(self) -> tuple[torch.Tensor, ...]:
        """dW in compact form, by index operations (no loop over features):
          share: (per_group,), (r^, in): dW[j] = per_group[out_index[j]];
          else:  (values, columns), (out, n_folds*r^) each: dW[j, columns[j, k]] += values[j, k]."""
        dtype = self.compute_dtype(self.M)
        if self.compress == "share":
            # per_group[g, i] = sum over the slots s that read feature i of M[g, s mod r^]
            tiled = self.M.to(dtype).repeat(1, self.n_blocks)  # (r^, n_blocks*r^): column s is M[:, s mod r^]
            return tiled.new_zeros(self.r_hat, self.in_features).index_add_(1, self.in_index, tiled),
        # Block-diagonal: position p = b*r^ + o of M's output is row o of kernel b, over the slots of block b.
        # Output j gathers the positions out_index[j] + k*out (k < n_folds); those past M's output read zeros.
        n_positions = self.n_blocks * self.r_hat
        folds = torch.arange(self.n_folds, device=self.out_index.device)
        positions = self.out_index[:, None] + self.out_features * folds  # (out, n_folds)
        kernels = self.block_kernels(dtype).reshape(n_positions, self.r_hat)
        kernels = F.pad(kernels, (0, 0, 0, max(0, self.n_folds * self.out_features - n_positions)))
        blocks = (positions // self.r_hat).clamp(max=self.n_blocks - 1)
        values = kernels[positions].flatten(1)  # (out, n_folds*r^)
        columns = self.in_index.view(self.n_blocks, self.r_hat)[blocks].flatten(1)  # (out, n_folds*r^)
        return values, columns

    def add_delta_rows(self, acc: torch.Tensor, start: int, factors, sign: float) -> torch.Tensor:
        rows = slice(start, start + len(acc))
        if self.compress == "share":
            return acc.add_(factors[0][self.out_index[rows]], alpha=sign)
        values, columns = factors
        return acc.scatter_add_(1, columns[rows], values[rows] if sign > 0 else -values[rows])

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.compress == "share" else ""
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, r_hat={self.r_hat}, "
                f"compress={self.compress}{groups}")


def rotation_tables(n_blocks: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin of the angles b * 10000^(-2j/size) for block b, dimensions j and j + size/2 sharing angle j."""
    inv_freq = 10000.0 ** (-torch.arange(0, size, 2, dtype=torch.float64) / size)  # (size/2,)
    angles = torch.outer(torch.arange(n_blocks, dtype=torch.float64), inv_freq).repeat(1, 2)  # (n_blocks, size)
    return angles.cos(), angles.sin()


# ----------------------------------------------------------------------------------------------------------------------
# Model-level helpers: they work on any nn.Module.

ADAPTERS = {"lora": LoRALinear, "mora": MoRALinear}


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def add_adapters(model: nn.Module, method: str, r: int, targets, **kwargs) -> nn.Module:
    """Wrap every nn.Linear whose dotted name is, or ends with, one of `targets` ("c_attn", "mlp.c_fc", ...) in a
    LoRALinear / MoRALinear, and freeze every other parameter. kwargs go to the adapter (alpha, compress, dropout)."""
    if method not in ADAPTERS:
        raise ValueError(f"method must be one of {sorted(ADAPTERS)}, got {method!r}")
    if adapter_layers(model):
        raise ValueError("this model already has adapters; build a fresh model to add new ones")
    targets = [targets] if isinstance(targets, str) else list(targets)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(name, t) for name in linears)]
    if unmatched:
        known = sorted({name.rsplit(".", 1)[-1] for name in linears})
        raise ValueError(f"target(s) {unmatched} match no nn.Linear in the model; its linear layers are named {known}")
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


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (LoRA's A and B; MoRA's M and its index buffers), keyed as in model.state_dict()."""
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


if __name__ == "__main__":  # python mora.py: the table of r^ and trainable parameters in the README
    print("| in x out | r | LoRA: params, max rank | MoRA share: r^, params, max rank "
          "| MoRA rotate: r^, params, max rank |")
    print("|---|---|---|---|---|")
    for n_in, n_out in [(768, 768), (4096, 4096), (4096, 11008)]:
        for r in (8, 256):
            share, rotate = r_hat(n_in, n_out, r), r_hat(n_in, n_out, r, even=True)
            print(f"| {n_in} x {n_out} | {r} | {r * (n_in + n_out):,}, {r} | {share}, {share ** 2:,}, {share} "
                  f"| {rotate}, {rotate ** 2:,}, {min(n_in, n_out)} |")
