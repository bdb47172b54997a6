"""The GPU path, for whoever has a CUDA GPU: the default suite hides it (conftest), so these run only with --gpu.

    python -m pytest -q --gpu                          # on CUDA: about 3 minutes on one H200
    GPU_TESTS_DEVICE=cpu python -m pytest -q --gpu     # the same code path on the CPU (bf16 autocast there too)

Without a GPU (and without GPU_TESTS_DEVICE=cpu) every test here skips, saying why.
"""

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mora
import train
from model import GPT, GPTConfig, setup_device

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parent.parent
KINDS = ["full", "lora", *mora.COMPRESSIONS]
TINY = ["--n_layer", "2", "--n_head", "4", "--n_embd", "64", "--block_size", "64", "--batch_size", "8",
        "--eval_iters", "2", "--warmup", "2", "--log_interval", "1"]


@pytest.fixture
def device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("GPU_TESTS_DEVICE") == "cpu":
        return "cpu"
    pytest.skip("no CUDA GPU here (GPU_TESTS_DEVICE=cpu runs these tests on the CPU)")


@pytest.fixture
def exact_float32():
    """float32 matmuls in float32, not TF32 (which setup_device turns on for training): a comparison's reference."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def adapted_gpt(kind: str, device: str, n_embd: int = 768) -> GPT:
    """A 2-block GPT at GPT-2-small's width (every adapted layer takes the operator route), adapters at r=8 with random
    non-zero weights (fresh ones are zero: B, M), or every weight trainable for full fine-tuning."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=n_embd // 64, n_embd=n_embd, block_size=128, vocab_size=257))
    if kind != "full":
        mora.add_adapters(model, "lora" if kind == "lora" else "mora", 8, ["query", "key", "value", "output", "up",
                                                                           "down"],
                          **({} if kind == "lora" else {"compress": kind}))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(std=0.02)
    return model.to(device)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bf16_step_matches_float32(device, exact_float32, kind):
    """The loss and the gradient of one step under bf16 autocast, against the same step in float32: loss within 1%,
    the whole gradient within 5% of its norm (bf16 keeps 8 bits of mantissa: about 0.4% per rounding; measured on the
    CPU, 2026-12-04: 0.7-1.2% for every kind, the loss within 5e-5). Per tensor is
    no measure: the keys' bias gets a gradient of zero in exact arithmetic (softmax ignores a shift shared by every
    key), so float32 and bf16 give it rounding noise of different sizes."""
    model = adapted_gpt(kind, device)
    tokens = torch.randint(0, 257, (4, 129), generator=torch.Generator().manual_seed(1)).to(device)
    results = []
    for dtype in ("float32", "bfloat16"):
        model.zero_grad(set_to_none=True)
        _, ctx, _ = setup_device(device, dtype)
        torch.backends.cuda.matmul.allow_tf32 = False  # setup_device turns TF32 on; the reference stays float32
        with ctx:
            loss = model(tokens[:, :-1], tokens[:, 1:])[1]
        loss.backward()
        grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (loss32, grads32), (loss16, grads16) = results
    assert abs(loss16 - loss32) < 0.01 * loss32, (loss16, loss32)
    grad32, grad16 = (torch.cat([g.flatten() for g in grads.values()]) for grads in (grads32, grads16))
    assert (grad16 - grad32).norm() <= 0.05 * grad32.norm(), ((grad16 - grad32).norm(), grad32.norm())
    optimizer = model.configure_optimizers(0.0, 1e-3, (0.9, 0.99), torch.device(device).type)
    train.train_step(model, optimizer, [(tokens[:, :-1], tokens[:, 1:])], setup_device(device, "bfloat16")[1], 1e-3,
                     1.0)  # and the training step itself runs in bf16
    assert all(p.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS[1:])
def test_merge_and_remove_adapters_on_the_gpu(device, exact_float32, kind):
    model = adapted_gpt(kind, device).eval()
    tokens = torch.randint(0, 257, (2, 64), device=device)
    with torch.no_grad():
        before = model(tokens)[0]
        plain = mora.remove_adapters(copy.deepcopy(model))
        assert not mora.adapter_layers(plain)
        torch.testing.assert_close(plain(tokens)[0], before, atol=1e-4, rtol=1e-4)
        for layer in mora.adapter_layers(model).values():  # a restart: W0 + dW, then a fresh adapter
            layer.merge()
        torch.testing.assert_close(model(tokens)[0], before, atol=1e-4, rtol=1e-4)
    layer = adapted_gpt(kind, device).h[0].attn.query  # a bf16 weight rounds once, from a float32 dW
    bf16 = copy.deepcopy(layer).to(torch.bfloat16)
    expected = (bf16.base.weight.float() + layer.to(torch.bfloat16).float().delta_from_identity()).bfloat16()
    bf16.merge()
    assert torch.equal(bf16.base.weight, expected)


def test_generation_with_the_cache_equals_recomputing_every_step(device, exact_float32):
    model = adapted_gpt("rotate", device, n_embd=128).eval()
    prompt = torch.randint(0, 257, (3, 5), device=device)
    cached = model.generate(prompt, max_new_tokens=20, temperature=0)
    idx = prompt
    with torch.no_grad():
        for _ in range(20):
            idx = torch.cat((idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(cached, idx)


def test_a_remora_restart_and_a_compiled_run(device, tmp_path):
    remora = train.main(TINY + ["--method", "remora", "--device", device, "--max_iters", "6", "--merge_every", "3",
                                "--eval_interval", "6", "--out_dir", str(tmp_path / "remora")])
    compiled = train.main(TINY + ["--method", "mora", "--device", device, "--max_iters", "4", "--eval_interval", "4",
                                  "--compile", "--out_dir", str(tmp_path / "compiled")])
    assert all(summary["diverged_at"] is None and summary["final_val_loss"] < 5.6 for summary in (remora, compiled))
    state = torch.load(tmp_path / "remora" / "ckpt.pt", weights_only=True)["model"]
    assert not torch.equal(state["h.0.attn.query.in_perm"].cpu(), torch.arange(64))  # the restart drew permutations


def test_torchrun_with_one_process(device, tmp_path):
    """One process under torchrun: nccl on a GPU (gloo on the CPU), DDP wrapping, a restart, the final all-gather."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py", *TINY,
               "--method", "relora", "--device", device, "--max_iters", "4", "--merge_every", "2", "--eval_interval",
               "4", "--out_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 process(es)" in result.stdout and "merged and restarted" in result.stdout
    with contextlib.suppress(FileNotFoundError):
        assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 4
