"""The GPT of model.py: shapes, causality, weight tying, generation and optimizer groups.

    python -m pytest -q tests/test_model.py
"""

import torch

import mora
from model import GPT, GPTConfig, setup_device

TINY = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY)


def test_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, 50, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 50) and loss.ndim == 0
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5  # about uniform at init
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None
    assert model.lm_head.weight is model.wte.weight


def test_attention_is_causal():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 50
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    torch.testing.assert_close(a[0, :10], b[0, :10])  # positions before 10 cannot see token 10
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_projections_are_named_for_adapters():
    names = {name for name, m in tiny_gpt().named_modules() if isinstance(m, torch.nn.Linear)}
    for i in range(2):
        assert {f"h.{i}.attn.{p}" for p in ("query", "key", "value", "output")} <= names
        assert {f"h.{i}.mlp.up", f"h.{i}.mlp.down"} <= names


def test_cached_greedy_generation_equals_recomputing_everything():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 50, (3, 4))
    out = model.generate(prompt, 20, temperature=0)  # 24 > block_size 16: crosses the context limit
    expected = prompt
    for _ in range(20):  # the definition: the argmax of a full forward over the (cropped) sequence so far
        logits, _ = model(expected[:, -TINY.block_size:])
        expected = torch.cat((expected, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, expected)
    caches = [{} for _ in model.h]  # the cache gives the same logits as a full forward
    model(prompt, caches=caches)
    cached, _ = model(out[:, 4:5], caches=caches)
    full, _ = model(out[:, :5])
    torch.testing.assert_close(cached[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_a_chunk_after_cached_positions_attends_causally():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 50, (2, 12))
    caches = [{} for _ in model.h]
    model(idx[:, :5], caches=caches)
    chunk, _ = model(idx[:, 5:], idx[:, 5:], caches=caches)  # 7 new positions after 5 cached ones
    full, _ = model(idx, idx)
    torch.testing.assert_close(chunk, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_sampling():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 50, (2, 4))
    torch.manual_seed(0)
    assert torch.equal(model.generate(prompt, 5, temperature=1.0, top_k=1), model.generate(prompt, 5, temperature=0))
    sampled = model.generate(prompt, 1, temperature=2.0, top_k=3)[:, -1]
    top3 = model(prompt)[0][:, -1].topk(3).indices
    assert all(token in row for token, row in zip(sampled.tolist(), top3.tolist()))


def test_optimizer_takes_trainable_parameters_and_decays_only_weight_matrices():
    model = mora.add_adapters(tiny_gpt(), "mora", 4, ["query", "up"])
    model.wte.weight.requires_grad_(True)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    decayed, plain = ([id(p) for p in g["params"]] for g in optimizer.param_groups)
    assert decayed == [id(model.wte.weight)]
    assert set(plain) == {id(layer.M) for layer in mora.adapter_layers(model).values()}
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_device_auto_means_the_cpu_under_the_suite():
    """conftest hides any GPU: the exact comparisons of this suite assume float32 on the CPU, where CI runs them."""
    device, _, dtype = setup_device()
    assert (device.type, dtype) == ("cpu", "float32")
