"""
LoRA and MoRA adapters for any linear layer, with exact merge and ReLoRA / ReMoRA restarts (the README draws both).

  LoRA (Hu et al. 2021):     h = W0 x + (alpha / r) B A x       trainable r (in + out);     rank(dW) <= r
  MoRA (Jiang et al. 2024):  h = W0 x + f_decomp(M f_comp(x))   trainable r^2 ~ r (in + out); rank(dW) <= min(in, out)

B A and M start at zero; f_comp (in -> r^) and f_decomp (r^ -> out) are fixed. Every map is linear, so the update is a
real (out, in) matrix dW (column i: the adapter path applied to the unit input e_i) that merge() adds to W0.
Read top down: r^, the compressions, the adapters; then the engineering (same numbers, faster); model helpers.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def r_hat_of(in_features: int, out_features: int, r: int, even: bool = False) -> int:
    """Side of MoRA's square M with the budget of a rank-r LoRA: r^2 ~ r (in + out), rounded to the nearest integer
    as in the authors' code (the paper floors: 768 x 768 at r=8, sqrt(12288) = 110.9 gives 111, not 110)."""
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    size = int(math.sqrt((in_features + out_features) * r) + 0.5)
    return size // 2 * 2 if even else size  # rotation pairs dimension j with j + r^/2


# --- MoRA's compressions: fixed linear maps around M

class Compression(nn.Module):
    """MoRA's fixed maps around M: f_comp (..., in) -> (..., blocks, r^) and f_decomp (..., blocks, r^) -> (..., out).
    A new compression subclasses this and defines the two (block_matrices too if the blocks do not all see M;
    even_r_hat if r^ must be even); MoRALinear builds dW, merges and restarts from them alone. A buffer it registers
    (fixed random maps, say) is saved with the adapter (adapter_state_dict) unless registered persistent=False."""

    even_r_hat = False

    def __init__(self, in_features: int, out_features: int, r_hat: int):
        super().__init__()
        self.in_features, self.out_features, self.r_hat = in_features, out_features, r_hat

    def block_matrices(self, M: torch.Tensor) -> torch.Tensor:  # what multiplies each block: M (r^, r^) for all
        return M


def wrap(x: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length), position j reads x_(j mod n): pads by wrapping around (as the authors), or cuts."""
    if length <= x.shape[-1]:
        return x[..., :length]  # a cut is a view
    return torch.cat([x] * (length // x.shape[-1]) + [x[..., :length % x.shape[-1]]], dim=-1)


def fold(y: torch.Tensor, length: int) -> torch.Tensor:
    """(..., n) -> (..., length): output j sums y_j, y_(j + length), y_(j + 2 length), ... (zero-padded)."""
    folds = -(-y.shape[-1] // length)
    return F.pad(y, (0, folds * length - y.shape[-1])).unflatten(-1, (folds, length)).sum(-2)


class Truncate(Compression):
    """Truncation (§4): f_comp keeps the first r^ input features (wrapping around to feature 0 when r^ > in),
    f_decomp pads M's r^ outputs with zeros (and folds them when r^ > out). Decoupling repeats it over n blocks."""

    n_blocks, folded = 1, True

    def f_comp(self, x):  # (..., in) -> (..., n, r^): the input wrapped around to n r^ features, cut into n blocks
        return wrap(x, self.n_blocks * self.r_hat).unflatten(-1, (self.n_blocks, self.r_hat))

    def f_decomp(self, y):  # (..., n, r^) -> (..., out): the n r^ outputs folded onto out, or repeated to out
        return (fold if self.folded else wrap)(y.flatten(-2), self.out_features)


class Share(Compression):
    """Sharing (Eq. 6): f_comp sums groups of features, f_decomp repeats M's outputs. The input is wrapped around to
    n r^ features (n = ceil(in / r^); when r^ does not divide it the first features count twice: 128 -> r^ = 45,
    features 0-6 are in two groups). Position p joins group p mod r^ and output j reads group j mod r^ (the authors);
    share_contiguous groups runs: positions g n ... g n + n - 1 form group g, and output j reads floor(j r^ / out)."""

    contiguous = False

    def f_comp(self, x):  # (..., in) -> (..., 1, r^)
        n = math.ceil(self.in_features / self.r_hat)
        groups = wrap(x, n * self.r_hat).unflatten(-1, (self.r_hat, n) if self.contiguous else (n, self.r_hat))
        return groups.sum(-1 if self.contiguous else -2).unsqueeze(-2)

    def f_decomp(self, y):  # (..., 1, r^) -> (..., out)
        j = torch.arange(self.out_features, device=y.device)
        group = j * self.r_hat // self.out_features if self.contiguous else j % self.r_hat
        return y.squeeze(-2).index_select(-1, group)


class ShareContiguous(Share):
    contiguous = True  # see Share


class Decouple(Truncate):
    """Decoupling: truncation over n = ceil(in / r^) blocks of the input; the n r^ block outputs are repeated or cut to
    out (the authors), or, when in > out, folded onto out so that no input block is dropped."""

    def __init__(self, in_features, out_features, r_hat):
        super().__init__(in_features, out_features, r_hat)
        self.n_blocks, self.folded = math.ceil(in_features / r_hat), in_features > out_features


class Rotate(Decouple):
    """Rotation (Eq. 9): decoupling with block b multiplied by M R_b, R_b turning dimensions j and j + r^/2 RoPE-style
    by the angle b * 10000^(-2j / r^): on M's columns (n small products a step), not on every block of every token."""

    even_r_hat = True

    def __init__(self, in_features, out_features, r_hat):
        super().__init__(in_features, out_features, r_hat)
        inv_freq = 10000.0 ** (-torch.arange(0, r_hat, 2, dtype=torch.float64) / r_hat)  # (r^/2,)
        # (n, r^): j and j + r^/2 share their angle (the repeat), so diag(sin_b) P = P diag(sin_b) in M R_b below
        angles = torch.outer(torch.arange(self.n_blocks, dtype=torch.float64), inv_freq).repeat(1, 2)
        sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat_interleave(r_hat // 2)
        self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)  # (n, 1, r^): buffers follow .to()
        self.register_buffer("signed_sin", (angles.sin() * sign)[:, None, :], persistent=False)

    def block_matrices(self, M):  # (n, r^, r^): M R_b = M diag(cos_b) + M P diag(sin_b), P (x1, x2) -> (-x2, x1)
        return M * self.cos + M.roll(-(self.r_hat // 2), dims=-1) * self.signed_sin  # M P = [M_2, -M_1] by columns


COMPRESSIONS = {"truncate": Truncate, "share": Share, "share_contiguous": ShareContiguous, "decouple": Decouple,
                "rotate": Rotate}


# --- The adapters

class AdapterLinear(nn.Module):
    """A frozen base layer W0 plus an update dW, and merge(). Subclasses define adapter_forward(x) = dW x (for x of any
    dtype) and reset_adapter()."""

    def __init__(self, base: nn.Module, dense: bool | None):
        super().__init__()
        if not isinstance(base, nn.Linear) and not is_conv1d(base):
            raise TypeError(f"adapters wrap an nn.Linear or a transformers Conv1D, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.out_features, self.in_features = self.base_weight.shape
        self.dense = self.in_features * self.out_features <= DENSE_MAX_WEIGHTS if dense is None else dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.dense:  # the same h in one matmul with W0 + dW: cheaper for small layers than the operators
            return F.linear(x, self.weight, self.bias)
        return self.base(x) + self.adapter_forward(x)  # h = W0 x + dW x

    def delta_from_identity(self) -> torch.Tensor:  # (out, in): column i is the adapter path on the unit input e_i
        """dW by its definition, in at least float32 (a bf16 merge rounds once). The dense route trains through it."""
        eye = torch.eye(self.in_features, dtype=self.delta_dtype(), device=self.base_weight.device)
        return self.adapter_forward(eye).t()

    def delta_weight(self) -> torch.Tensor:
        """dW as merge() adds it: for LoRA and the built-in compressions, from their structure (tested equal)."""
        zeros = self.base_weight.new_zeros(self.out_features, self.in_features, dtype=self.delta_dtype())
        return self.add_delta_(zeros)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + dW, then a fresh adapter from dW = 0 (reset_adapter), so the output is unchanged: one ReLoRA /
        ReMoRA restart. Refuses a non-finite update and leaves W0 untouched then."""
        if not all(p.isfinite().all() for name, p in self.named_parameters() if not name.startswith("base.")):
            raise ValueError(f"{type(self).__name__}.merge(): the update has inf/nan values; W0 was left unchanged")
        self.add_delta_(self.base_weight)
        self.reset_adapter()

    # Engineering from here on: dW without the identity, Conv1D's transposed W0, W0 + dW for the dense route.
    def delta_adder(self):  # None (build dW from the identity), or add(target, start, stop): target += dW[start:stop]
        return None

    def add_delta_(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (out, in) += dW in place, rows in chunks: no weight-sized temporary (on CPU, fresh memory costs more
        than the add), dW in at least float32 (under autocast too), rounded once to weight's dtype."""
        add, dtype = self.delta_adder(), self.delta_dtype()
        with torch.autocast(weight.device.type, enabled=False):
            if add is None:
                return weight.add_(self.delta_from_identity())
            step = max(1, MERGE_CHUNK_WEIGHTS // self.in_features)
            for start in range(0, self.out_features, step):
                chunk = weight[start:start + step]  # .to() returns it as is when in float32 already, and copy_ from
                chunk.copy_(add(chunk.to(dtype), start, start + len(chunk)))  # itself is then a no-op
        return weight

    def delta_dtype(self) -> torch.dtype:
        return torch.promote_types(self.base_weight.dtype, torch.float32)

    @property
    def base_weight(self) -> torch.Tensor:  # (out, in), a view
        return self.base.weight.t() if is_conv1d(self.base) else self.base.weight

    @property
    def weight(self) -> torch.Tensor:  # W0 + dW (out, in): also what code reading .weight sees (fused attention)
        return (self.base_weight + self.delta_from_identity()).to(self.base_weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class LoRALinear(AdapterLinear):
    """h = W0 x + (alpha / r) B A x, with A kaiming-uniform and B zero, so training starts from the base model."""

    def __init__(self, base: nn.Module, r: int, alpha: float | None = None, dense: bool | None = None):
        super().__init__(base, dense)
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

    def delta_adder(self):  # rows of dW: (alpha / r) B[rows] A
        A, B = self.lora_A.to(self.delta_dtype()), self.lora_B.to(self.delta_dtype())
        return lambda target, start, stop: target.addmm_(B[start:stop], A, alpha=self.scaling)


class MoRALinear(AdapterLinear):
    """h = W0 x + f_decomp(M f_comp(x)) (§4) with one trainable square M (r^ x r^, zeros), no alpha scaling.
    compress: a name in COMPRESSIONS, or any callable (in, out, r_hat) -> Compression (a subclass, a partial of one).
    ReMoRA's merge() permutes the input and output features at random around the compression (in_perm, out_perm;
    the identity at first), so each cycle's update lands on new rows and columns and the accumulated rank grows."""

    def __init__(self, base: nn.Module, r: int, compress="rotate", dense: bool | None = None):
        super().__init__(base, dense)
        factory = COMPRESSIONS.get(compress) if isinstance(compress, str) else compress
        if not callable(factory):
            raise ValueError(f"compress must be one of {list(COMPRESSIONS)} or a callable (in, out, r_hat) -> "
                             f"Compression, got {compress!r}")
        even = getattr(getattr(factory, "func", factory), "even_r_hat", False)  # a class, or a partial of one
        self.r, self.r_hat = r, r_hat_of(self.in_features, self.out_features, r, even=even)
        self.compression = factory(self.in_features, self.out_features, self.r_hat)
        self.compression.to(self.base_weight.device, self.base_weight.dtype)
        self.M = nn.Parameter(self.base_weight.new_zeros(self.r_hat, self.r_hat))
        self.register_buffer("in_perm", torch.arange(self.in_features, device=self.base_weight.device))
        self.register_buffer("out_perm", torch.arange(self.out_features, device=self.base_weight.device))
        self.permuted = False  # no gathers while the permutations are the identity; a load may bring ReMoRA's
        self.register_load_state_dict_post_hook(lambda layer, _: setattr(layer, "permuted", True))

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        x = x.index_select(-1, self.in_perm) if self.permuted else x
        z = self.compression.f_comp(x)  # (..., blocks, r^)
        M = self.compression.block_matrices(self.M.to(z.dtype))  # (r^, r^), or one per block (blocks, r^, r^)
        y = z @ M.t() if M.dim() == 2 else torch.einsum("...bj,bij->...bi", z, M)  # (..., blocks, r^)
        y = self.compression.f_decomp(y)  # (..., out)
        return y.index_select(-1, self.out_perm) if self.permuted else y

    def reset_adapter(self) -> None:
        """M <- 0 and, for ReMoRA, new random permutations of the input and output features (torch's global RNG)."""
        nn.init.zeros_(self.M)
        self.in_perm.copy_(torch.randperm(self.in_features))
        self.out_perm.copy_(torch.randperm(self.out_features))
        self.permuted = True

    def delta_adder(self):  # the built-in compressions only: a subclass may change f_comp
        c, M = self.compression, self.M.to(self.delta_dtype())
        if type(c) in (Truncate, Decouple, Rotate, Share, ShareContiguous):
            return (shared_adder if isinstance(c, Share) else block_diagonal_adder)(c, M, self.out_perm, self.in_perm)


# --- Engineering: none of it changes a number (each piece is tested equal to the plain form above)
# Up to this many weights (512 x 512), forward() builds W0 + dW from the identity once per call and applies it in
# one matmul: cheaper than running the operators on every token there (docs/performance.md), and the same numbers.
DENSE_MAX_WEIGHTS = 1 << 18
MERGE_CHUNK_WEIGHTS = 1 << 20  # a merge's chunks of rows: 4 MB in float32, in cache and recycled by the allocator


def block_diagonal_adder(c: Truncate, M: torch.Tensor, out_perm: torch.Tensor, in_perm: torch.Tensor):
    """Truncation, decoupling, rotation: only dW's nonzeros. Slot b r^ + q is row q of block b's matrix over the
    features slots b r^ ... b r^ + r^ - 1 read; output j reads slot j mod n r^, or, folding, sums slots j, j + out, ...
    (past the last slot, n r^ reads a block of zeros)."""
    period = c.n_blocks * c.r_hat
    blocks = F.pad(c.block_matrices(M).expand(c.n_blocks, -1, -1), (0, 0, 0, 0, 0, 1))  # (n + 1, r^, r^)
    columns = in_perm[torch.arange(period + c.r_hat, device=M.device) % c.in_features].view(-1, c.r_hat)
    offsets = torch.arange(0, period, c.out_features, device=M.device)  # folding: slots j, j + out, j + 2 out, ...

    def add(target, start, stop):  # all the slots that each row reads, in one scatter: (rows, slots read * r^)
        inner = out_perm[start:stop, None]
        slot = (inner + offsets).clamp(max=period) if c.folded else inner % period
        block, q = slot // c.r_hat, slot % c.r_hat
        return target.scatter_add_(1, columns[block].flatten(1), blocks[block, q].flatten(1))
    return add


def shared_adder(c: Share, M: torch.Tensor, out_perm: torch.Tensor, in_perm: torch.Tensor):
    """Sharing: dW = D M C with D (out, r^) picking one group per output, so row j of dW is row (group of j) of T = M C:
    f_comp's vector-Jacobian products with M's rows (f_comp is linear), an (r^, in) computation."""
    with torch.enable_grad():
        x = M.new_zeros(c.r_hat, c.in_features, requires_grad=True)
        T = torch.autograd.grad(c.f_comp(x), x, M.unsqueeze(-2))[0][:, in_perm.argsort()]
    group = c.f_decomp(torch.arange(c.r_hat, device=M.device, dtype=M.dtype)[None]).long()  # of each output
    return lambda target, start, stop: target.add_(T[group[out_perm[start:stop]]])


def is_conv1d(module: nn.Module) -> bool:  # HuggingFace GPT-2's layer: y = x @ weight + bias, weight (in, out)
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


# --- Model-level helpers: they work on any nn.Module, e.g. model.py's GPT or a HuggingFace GPT-2 / LLaMA.

ADAPTERS = {"lora": LoRALinear, "mora": MoRALinear}


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def add_adapters(model: nn.Module, method: str, r: int, targets, **kwargs) -> nn.Module:
    """Wrap every linear layer (nn.Linear or Conv1D) whose dotted name is, or ends with, one of `targets` ("query",
    "mlp.up", "q_proj", ...) in a LoRALinear / MoRALinear, and freeze every other parameter. kwargs go to the
    adapter (alpha, compress, dense)."""
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
            model.set_submodule(name, ADAPTERS[method](linear, r, **kwargs))
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Merge every adapter and put its base layer back: the model's own state dict keys again (save_pretrained's)."""
    for name, layer in adapter_layers(model).items():
        layer.merge()
        model.set_submodule(name, layer.base)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (LoRA's A, B; MoRA's M, permutations, compression's persistent buffers), by name."""
    return {f"{name}.{key}": tensor for name, layer in adapter_layers(model).items()
            for key, tensor in layer.state_dict().items() if not key.startswith("base.")}


def load_adapter_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors into a model with the same adapters; a key or shape that does not fit is an error."""
    own = adapter_state_dict(model).keys()
    missing, unexpected = sorted(own - state_dict.keys()), sorted(state_dict.keys() - own)
    if missing or unexpected:
        raise ValueError(f"adapter state dict does not fit this model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state_dict, strict=False)  # strict=False: the base weights are not in it


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
