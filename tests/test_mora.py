"""Correctness of mora.py: LoRA / MoRA adapters, merge, restart and the model-level helpers.

    python -m pytest -q tests/test_mora.py

Every check compares against an independent formulation, in float64 where numbers are compared.
"""

import copy
import functools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mora
from mora import COMPRESSIONS, LoRALinear, MoRALinear

F64 = torch.float64
# (in, out, r): square, in < out, in > out, in divisible by r^ (r^ = 16), r^ >= in
SHAPES = [(64, 64, 4), (48, 80, 4), (80, 48, 4), (32, 32, 4), (6, 20, 8)]
KINDS = ["lora"] + [f"mora-{c}" for c in COMPRESSIONS]


def make_adapter(kind: str, n_in: int, n_out: int, r: int, dtype=F64, randomize=True, seed=0, dense=False):
    """An adapter of `kind` around a fresh nn.Linear, with random (non-zero) adapter weights when `randomize`.
    dense=False by default: the tests exercise the adapter's own operators, not the W + dW shortcut."""
    torch.manual_seed(seed)
    base = nn.Linear(n_in, n_out, dtype=dtype)
    if kind == "lora":
        layer = LoRALinear(base, r, dense=dense)
    else:
        layer = MoRALinear(base, r, compress=kind.removeprefix("mora-"), dense=dense)
    if randomize:
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if not name.startswith("base."):
                    p.normal_()
    return layer


def rank(matrix: torch.Tensor) -> int:
    return torch.linalg.matrix_rank(matrix.double()).item()


# 1. forward == F.linear(x, W + dW, b) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_in,n_out,r", SHAPES)
@pytest.mark.parametrize("batch_shape", [(7,), (2, 5)])
def test_forward_equals_linear_with_delta_weight(kind, n_in, n_out, r, batch_shape):
    layer = make_adapter(kind, n_in, n_out, r)
    x = torch.randn(*batch_shape, n_in, dtype=F64)
    expected = F.linear(x, layer.base.weight + layer.delta_weight(), layer.base.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "lora"])
@pytest.mark.parametrize("n_in,n_out,r", SHAPES)
def test_forward_and_delta_after_remora_restart(kind, n_in, n_out, r):
    """A restarted MoRA (permuted patterns) is still exactly W' + dW, and the structured dW (LoRA and the built-in
    compressions add it up from their structure) equals dW by its definition, through the identity."""
    layer = make_adapter(kind, n_in, n_out, r)
    layer.merge()
    assert layer.permuted
    nn.init.normal_(layer.M)
    x = torch.randn(9, n_in, dtype=F64)
    expected = F.linear(x, layer.base.weight + layer.delta_from_identity(), layer.base.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.delta_weight(), layer.delta_from_identity(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_in,n_out,r", SHAPES)
def test_dense_route_gives_same_outputs_and_gradients(kind, n_in, n_out, r):
    """Small layers apply F.linear(x, W + dW): the output and every adapter gradient must match the operators'."""
    x = torch.randn(2, 5, n_in, dtype=F64)
    grads = []
    for dense in (False, True):
        layer = make_adapter(kind, n_in, n_out, r, dense=dense)
        out = layer(x)
        out.pow(2).sum().backward()
        grads.append((out.detach(), [p.grad for p in layer.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-10, rtol=0)
    for structured, dense in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(structured, dense, atol=1e-9, rtol=1e-9)


def test_dense_route_chosen_by_layer_size():
    assert MoRALinear(nn.Linear(128, 512), 8).dense and LoRALinear(nn.Linear(512, 512), 8).dense
    assert not MoRALinear(nn.Linear(768, 768), 8).dense and not LoRALinear(nn.Linear(4096, 1024), 8).dense


# 2. dW equals an explicit D @ M @ C built here, following the authors' conventions ------------------------------------

def compress_matrices(n_in: int, size: int, n_blocks: int, contiguous=False) -> list[torch.Tensor]:
    """One (size, in) 0/1 matrix per block: slot k of block b reads feature (b*size + k) mod in (wrap-around padding);
    contiguous grouping: group k of block b reads feature (k*n_blocks + b) mod in."""
    mats = []
    for b in range(n_blocks):
        C = torch.zeros(size, n_in, dtype=F64)
        for k in range(size):
            C[k, ((k * n_blocks + b) if contiguous else (b * size + k)) % n_in] += 1
        mats.append(C)
    return mats


def rotation_matrix(size: int, block: int) -> torch.Tensor:
    """RoPE rotation of block `block`: pair (j, j + size/2) rotated by block * 10000^(-2j/size)."""
    R = torch.zeros(size, size, dtype=F64)
    half = size // 2
    for j in range(half):
        angle = block * 10000.0 ** (-2 * j / size)
        c, s = math.cos(angle), math.sin(angle)
        R[j, j], R[j, j + half] = c, -s
        R[j + half, j], R[j + half, j + half] = s, c
    return R


def expected_delta(layer: MoRALinear) -> torch.Tensor:
    """D @ M @ C (decouple / rotate: D @ blockdiag(M R_b) @ C), from explicit 0/1 matrices built loop by loop."""
    n_in, n_out, size, M = layer.in_features, layer.out_features, layer.r_hat, layer.M.detach()
    kind = type(layer.compression).__name__
    if kind == "Truncate":
        C = compress_matrices(n_in, size, 1)[0]  # the first r^ features (wrapped when r^ > in)
        D = torch.zeros(n_out, size, dtype=F64)
        for k in range(size):
            D[k % n_out, k] = 1  # zero-padded; folded when r^ > out
        return D @ M @ C
    n_blocks = math.ceil(n_in / size)
    contiguous = kind == "ShareContiguous"
    Cs = compress_matrices(n_in, size, n_blocks, contiguous)
    if kind in ("Share", "ShareContiguous"):
        C = sum(Cs)  # sum of the groups
        D = torch.zeros(n_out, size, dtype=F64)
        for j in range(n_out):
            D[j, (j * size // n_out) if contiguous else (j % size)] = 1  # repeat-interleave / repeat
        return D @ M @ C
    R = rotation_matrix if kind == "Rotate" else (lambda size, b: torch.eye(size, dtype=F64))
    blocks = torch.cat([M @ R(size, b) @ C for b, C in enumerate(Cs)])  # (n_blocks*size, in)
    length = n_blocks * size
    D = torch.zeros(n_out, length, dtype=F64)
    if n_in <= n_out:  # the authors: flatten the block outputs, truncate or tile to out
        for j in range(n_out):
            D[j, j % length] = 1
    else:  # departure from the authors: fold every block output onto the outputs
        for p in range(length):
            D[p % n_out, p] = 1
    return D @ blocks


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "lora"])
@pytest.mark.parametrize("n_in,n_out,r", SHAPES + [(40, 200, 2), (8, 3, 2)])
def test_delta_weight_matches_explicit_construction(kind, n_in, n_out, r):
    layer = make_adapter(kind, n_in, n_out, r)
    torch.testing.assert_close(layer.delta_weight(), expected_delta(layer), atol=1e-10, rtol=0)
    x = torch.randn(5, n_in, dtype=F64)  # and the operators on x give the same update
    torch.testing.assert_close(layer.adapter_forward(x), x @ expected_delta(layer).t(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("alpha,scale", [(None, 2.0), (3.0, 0.75)])  # r=4: the default alpha = 2r, and alpha = 3
def test_lora_delta_weight_is_alpha_over_r_times_b_a(alpha, scale):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(48, 80, dtype=F64), 4, alpha=alpha, dense=False)
    nn.init.normal_(layer.lora_B)
    torch.testing.assert_close(layer.delta_weight(), scale * layer.lora_B @ layer.lora_A, atol=1e-12, rtol=0)


def test_no_input_feature_ignored_when_in_greater_than_out():
    """The authors' rotation keeps ceil(out/r^) blocks; every input column of dW must be non-zero here."""
    for compress in ("decouple", "rotate"):
        layer = make_adapter(f"mora-{compress}", 1024, 256, 8)
        assert layer.compression.n_blocks > math.ceil(256 / layer.r_hat)  # there are blocks the authors would drop
        assert (layer.delta_weight().abs().sum(0) > 0).all()
        assert rank(layer.delta_weight()) == 256


# 3. parameter parity --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,n_out,r", [(768, 768, 8), (768, 2304, 8), (3072, 768, 8), (4096, 11008, 8),
                                          (4096, 4096, 256), (100, 37, 3)])
def test_mora_trains_as_many_parameters_as_lora(n_in, n_out, r):
    lora = make_adapter("lora", n_in, n_out, r, dtype=torch.float32, randomize=False)
    budget = mora.count_trainable(lora)
    assert budget == r * (n_in + n_out)
    for compress in COMPRESSIONS:
        layer = make_adapter(f"mora-{compress}", n_in, n_out, r, dtype=torch.float32, randomize=False)
        size = layer.r_hat
        assert mora.count_trainable(layer) == size * size
        assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["M"]
        # rounding to the nearest integer costs at most r^ + 1; rounding that down to even (rotate) up to 3 r^ + 3
        assert abs(size * size - budget) <= (3 * size + 3 if compress == "rotate" else size + 1)
        if (n_in, n_out) in [(768, 768), (4096, 11008), (4096, 4096)]:  # the README table's shapes
            assert abs(size * size - budget) <= 2 * size + 1


def test_r_hat_rule():
    assert mora.r_hat_of(4096, 4096, 8) == 256
    assert mora.r_hat_of(768, 768, 8) == 111 and mora.r_hat_of(768, 768, 8, even=True) == 110
    assert mora.r_hat_of(4096, 11008, 8) == 348  # sqrt(120832) = 347.6
    with pytest.raises(ValueError, match="r must be a positive integer"):
        mora.r_hat_of(64, 64, 0)


# 4. rank --------------------------------------------------------------------------------------------------------------

def test_rank_of_random_updates():
    r = 8
    assert rank(make_adapter("lora", 256, 256, r).delta_weight()) == r
    share = make_adapter("mora-share", 256, 256, r)
    assert share.r_hat == 64 and rank(share.delta_weight()) == 64
    assert rank(make_adapter("mora-share_contiguous", 256, 256, r).delta_weight()) == 64
    for compress in ("decouple", "rotate"):
        assert rank(make_adapter(f"mora-{compress}", 256, 256, r).delta_weight()) == 256
    assert rank(make_adapter("mora-rotate", 128, 384, r).delta_weight()) == 128  # min(in, out)


# 5. zero init, freezing, one optimizer step ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fresh_adapter_leaves_outputs_unchanged(kind):
    layer = make_adapter(kind, 40, 60, 4, randomize=False)
    x = torch.randn(5, 40, dtype=F64)
    assert torch.equal(layer(x), layer.base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0


def small_mlp(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 16), nn.LayerNorm(16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16),
                         nn.Linear(16, 10)).to(dtype)


@pytest.mark.parametrize("method,kwargs", [("lora", {}), ("mora", {"compress": "rotate"}),
                                           ("mora", {"compress": "share"})])
def test_only_adapters_train(method, kwargs):
    model = mora.add_adapters(small_mlp(), method, 4, targets=["2", "4"], **kwargs)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"2.lora_A", "2.lora_B", "4.lora_A", "4.lora_B"} if method == "lora" else {"2.M", "4.M"}
    assert trainable == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    tokens = torch.randint(0, 10, (4, 8))
    F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        if n in {"2.lora_A", "4.lora_A"}:  # B is zero at the first step, so A gets no gradient yet
            assert not changed
        else:
            assert changed == (n in expected), n


# 6. merge -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_in,n_out,r", SHAPES)
def test_merge_folds_dw_into_w0_and_restarts_from_zero(kind, n_in, n_out, r, monkeypatch):
    """merge(): W0 <- W0 + dW (the explicit construction for MoRA, B A for LoRA), then a fresh adapter with dW = 0,
    so the output does not change; merging again adds nothing. Chunks of 3 rows: the last one shorter."""
    monkeypatch.setattr(mora, "MERGE_CHUNK_WEIGHTS", 3 * n_in)
    layer = make_adapter(kind, n_in, n_out, r)
    x = torch.randn(6, n_in, dtype=F64)
    w0, before = layer.base.weight.detach().clone(), layer(x)  # through the adapter's operators
    delta = layer.lora_B @ layer.lora_A * layer.scaling if kind == "lora" else expected_delta(layer)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, w0 + delta, atol=1e-12, rtol=0)
    torch.testing.assert_close(F.linear(x, layer.base.weight, layer.base.bias), before, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-10, rtol=0)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    w1 = layer.base.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.base.weight, w1)


@pytest.mark.parametrize("kind", ["lora", "mora-share"])
def test_merge_refuses_non_finite_update(kind):
    layer = make_adapter(kind, 16, 16, 2)
    with torch.no_grad():
        next(p for n, p in layer.named_parameters() if not n.startswith("base.")).fill_(float("nan"))
    w0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="inf/nan"):
        layer.merge()
    assert torch.equal(layer.base.weight, w0)


@pytest.mark.parametrize("kind", ["lora", "mora-rotate", "mora-share"])
@pytest.mark.parametrize("n_in,n_out", [(64, 96), (80, 48)])
def test_bf16_merge_uses_fp32_delta(kind, n_in, n_out, monkeypatch):
    """Every weight rounds once, also where two blocks' wrap-arounds reach it (80 -> 48) and across chunks of rows."""
    monkeypatch.setattr(mora, "MERGE_CHUNK_WEIGHTS", 7 * n_in)
    layer = make_adapter(kind, n_in, n_out, 4, dtype=torch.bfloat16)
    fp32 = copy.deepcopy(layer).float()
    w0 = layer.base.weight.detach().float()
    layer.merge()
    assert layer.base.weight.dtype == torch.bfloat16
    assert torch.equal(layer.base.weight, (w0 + fp32.delta_from_identity()).bfloat16())


@pytest.mark.parametrize("kind", KINDS)
def test_merge_inside_a_bf16_autocast_region_builds_dw_in_float32(kind):
    layer = make_adapter(kind, 64, 96, 4, dtype=torch.float32)
    expected = layer.base.weight.detach() + layer.delta_weight().detach()  # outside autocast: float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.merge()
    torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=0)


def test_a_custom_compression_merges_in_float32_inside_a_bf16_autocast_region():
    """A compression of a fork's own has no structured merge: it merges through delta_from_identity, whose adapter
    path would run in bf16 under autocast if add_delta_ did not switch autocast off (off by about 1e-2 then)."""
    torch.manual_seed(0)
    layer = MoRALinear(nn.Linear(64, 96), 4, compress=PermutedShare, dense=False)
    nn.init.normal_(layer.M)
    expected = layer.base.weight.detach() + layer.delta_from_identity().detach()  # float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.merge()
    torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=0)


def test_a_compressions_persistent_buffers_travel_with_the_adapter_and_derived_ones_do_not():
    """PermutedShare's fixed permutation (persistent) is in adapter_state_dict, as Compression's docstring says;
    rotation's cos and sin tables (derived from the shape, registered persistent=False) are not."""
    model = nn.Sequential(nn.Linear(40, 40), nn.Linear(40, 40))
    mora.add_adapters(model, "mora", 4, ["0"], compress=PermutedShare)
    keys = set(mora.adapter_state_dict(model))
    assert keys == {"0.M", "0.in_perm", "0.out_perm", "0.compression.order"}
    rotated = mora.add_adapters(nn.Sequential(nn.Linear(40, 40)), "mora", 4, ["0"], compress="rotate")
    assert set(mora.adapter_state_dict(rotated)) == {"0.M", "0.in_perm", "0.out_perm"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_tensor_follows_the_layer_to_another_device(kind):
    layer = make_adapter(kind, 40, 60, 4, dtype=torch.float32).to("meta")
    tensors = [t for m in layer.modules() for t in [*vars(m).values(), *m._parameters.values(), *m._buffers.values()]
               if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert layer(torch.empty(3, 40, device="meta")).shape == (3, 60)


def test_rotation_tables_follow_dtype_and_device():
    layer = make_adapter("mora-rotate", 40, 60, 4, dtype=torch.float32)
    x = torch.randn(3, 40)
    expected = layer(x)
    layer = layer.to(torch.bfloat16)
    assert layer.compression.cos.dtype == torch.bfloat16
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)


# 7. restart -----------------------------------------------------------------------------------------------------------

def test_lora_merge_keeps_output_and_reinitializes():
    layer = make_adapter("lora", 48, 80, 4)
    x = torch.randn(6, 48, dtype=F64)
    before, A = layer(x), layer.lora_A.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer(x), before, atol=1e-10, rtol=0)
    assert torch.count_nonzero(layer.lora_B) == 0 and not torch.equal(layer.lora_A, A)


def test_remora_accumulated_rank_keeps_growing():
    torch.manual_seed(0)
    base = nn.Linear(256, 256, bias=False, dtype=F64)
    w0 = base.weight.detach().clone()
    layer = MoRALinear(base, 8, compress="share")
    assert layer.r_hat == 64
    ranks = []
    for cycle in range(4):
        nn.init.normal_(layer.M)
        x = torch.randn(4, 256, dtype=F64)
        before = layer(x)
        layer.merge()
        torch.testing.assert_close(layer(x), before, atol=1e-10, rtol=0)  # the restart itself changes nothing
        assert torch.count_nonzero(layer.M) == 0
        ranks.append(rank(layer.base.weight - w0))
    assert ranks[0] == 64
    assert all(b > a for a, b in zip(ranks, ranks[1:])), ranks
    assert ranks[-1] > 128, ranks


# 8. model-level helpers on a model that is not ours -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "mora"])
def test_transformer_encoder_layer(method):
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    mora.add_adapters(model, method, 4, targets=["linear1", "linear2"], dense=False)
    assert isinstance(model.linear1, mora.AdapterLinear) and isinstance(model.linear2, mora.AdapterLinear)
    keys = {"lora": ["lora_A", "lora_B"], "mora": ["M", "in_perm", "out_perm"]}[method]
    assert set(mora.adapter_state_dict(model)) == {f"{layer}.{k}" for layer in ("linear1", "linear2") for k in keys}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    x = torch.randn(2, 5, 32)
    model.train()
    reference = model(x)  # the plain path, adapters applied by forward()
    model.eval()
    with torch.no_grad():  # torch's fused inference path reads .weight directly: it must see W + dW
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)
        for layer in mora.adapter_layers(model).values():
            layer.merge()
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "mora"])
def test_adapter_state_dict_roundtrip(method):
    """Adapter tensors saved after a restart (ReMoRA's permutations) load into a fresh model, which has never
    restarted, and give the same outputs."""
    model = mora.add_adapters(small_mlp(), method, 4, targets=["2", "4"], dense=False)
    for layer in mora.adapter_layers(model).values():
        layer.merge()  # non-default ReMoRA patterns must travel too
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if p.requires_grad:
                    p.normal_()
    saved = {k: v.clone() for k, v in mora.adapter_state_dict(model).items()}
    assert not any(".base." in k for k in saved)
    other = mora.add_adapters(small_mlp(), method, 4, targets=["2", "4"], dense=False)
    with torch.no_grad():  # the merged W0, copied by hand: only the adapter tensors go through a state dict
        for name, layer in mora.adapter_layers(other).items():
            layer.base.weight.copy_(model.get_submodule(name).base.weight)
    mora.load_adapter_state_dict(other, saved)
    tokens = torch.randint(0, 10, (3, 5))
    torch.testing.assert_close(other(tokens), model(tokens))
    with pytest.raises(ValueError, match=r"missing \['2.(M|lora_A)'\], unexpected \['bogus'\]"):
        first = next(iter(saved))
        mora.load_adapter_state_dict(other, {**{k: v for k, v in saved.items() if k != first}, "bogus": saved[first]})
    other_rank = mora.adapter_state_dict(mora.add_adapters(small_mlp(), method, 2, targets=["2", "4"]))
    with pytest.raises(RuntimeError, match="size mismatch for 2.(M|lora_A)"):
        mora.load_adapter_state_dict(other, other_rank)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match=r"target\(s\) \['c_attn'\] match no linear layer"):
        mora.add_adapters(small_mlp(), "mora", 4, targets=["c_attn"])
    with pytest.raises(ValueError, match="method must be one of"):
        mora.add_adapters(small_mlp(), "dora", 4, targets=["2"])
    for bad in ("zip", 42):
        with pytest.raises(ValueError, match="compress must be one of"):
            MoRALinear(nn.Linear(8, 8), 2, compress=bad)
    with pytest.raises(ValueError, match="LoRA rank r must be a positive integer"):
        LoRALinear(nn.Linear(8, 8), 0)
    with pytest.raises(ValueError, match="already has adapters"):
        mora.add_adapters(mora.add_adapters(small_mlp(), "lora", 2, ["2"]), "lora", 2, ["4"])


# 9. a new compression needs only its f_comp / f_decomp ----------------------------------------------------------------

class PermutedShare(mora.Share):
    """A toy compression defined here, with no change to mora.py: a fixed random permutation, then sharing."""

    def __init__(self, in_features, out_features, r_hat):
        super().__init__(in_features, out_features, r_hat)
        self.register_buffer("order", torch.randperm(in_features, generator=torch.Generator().manual_seed(7)))

    def f_comp(self, x):
        return super().f_comp(x.index_select(-1, self.order))


@pytest.mark.parametrize("n_in,n_out,r", SHAPES)
def test_a_new_compression_forwards_and_merges(n_in, n_out, r):
    torch.manual_seed(0)
    layer = MoRALinear(nn.Linear(n_in, n_out, dtype=F64), r, compress=PermutedShare, dense=False)
    nn.init.normal_(layer.M)
    P = torch.zeros(n_in, n_in, dtype=F64)  # (P x)_i = x_order[i]
    P[torch.arange(n_in), layer.compression.order] = 1
    shared = MoRALinear(nn.Linear(n_in, n_out, dtype=F64), r, compress="share")
    shared.M.data.copy_(layer.M)
    expected = expected_delta(shared) @ P  # D M C P, from the explicit construction above
    torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-10, rtol=0)
    x = torch.randn(2, 3, n_in, dtype=F64)
    w0 = layer.base.weight.detach().clone()
    reference = F.linear(x, w0 + expected, layer.base.bias)
    torch.testing.assert_close(layer(x), reference, atol=1e-10, rtol=0)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, w0 + expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer(x), reference, atol=1e-10, rtol=0)


class ScaledShare(mora.Share):
    """A configurable compression: sharing, scaled by a constructor argument."""

    def __init__(self, in_features, out_features, r_hat, scale=1.0):
        super().__init__(in_features, out_features, r_hat)
        self.scale = scale

    def f_comp(self, x):
        return super().f_comp(x) * self.scale


def test_compress_takes_a_name_a_class_or_any_callable():
    base = nn.Linear(768, 768)
    assert MoRALinear(base, 8, compress="rotate").r_hat == 110  # rotation: r^ rounded down to even
    assert MoRALinear(base, 8, compress=functools.partial(mora.Rotate)).r_hat == 110  # a partial keeps that
    assert type(MoRALinear(base, 8, compress=PermutedShare).compression) is PermutedShare
    layer = MoRALinear(nn.Linear(40, 60, dtype=F64), 4, compress=functools.partial(ScaledShare, scale=3.0))
    plain = MoRALinear(nn.Linear(40, 60, dtype=F64), 4, compress="share")
    nn.init.normal_(layer.M)
    plain.M.data.copy_(layer.M)
    torch.testing.assert_close(layer.delta_weight(), 3.0 * expected_delta(plain), atol=1e-10, rtol=0)
