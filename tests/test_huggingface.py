"""Adapters on other people's models: tiny, randomly initialized HuggingFace LLaMA and GPT-2 (skipped without
transformers; CI installs it). Nothing downloads.

    python -m pytest -q tests/test_huggingface.py
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mora

REPO = Path(__file__).resolve().parent.parent

transformers = pytest.importorskip("transformers", reason="pip install transformers to run the HuggingFace tests")

TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "down_proj"],  # k/v: grouped-query 64 -> 32; down: in > out
           "gpt2": ["c_attn", "c_proj", "c_fc"]}  # Conv1D layers, weights stored (in, out)


def tiny_model(family: str):
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        return transformers.LlamaForCausalLM(config).eval()
    config = transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def logits(model, tokens):
    return model(tokens).logits


@pytest.mark.parametrize("method", ["lora", "mora"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapters_train_merge_and_come_off(family, method):
    model = tiny_model(family)
    original_keys = set(model.state_dict())
    tokens = torch.randint(0, 100, (2, 12))
    before = logits(model, tokens)

    mora.add_adapters(model, method, 4, TARGETS[family])
    layers = mora.adapter_layers(model)
    assert len(layers) == 2 * 4  # per block; gpt2: c_attn, attn.c_proj, c_fc, mlp.c_proj
    if family == "llama":
        assert (layers["model.layers.0.self_attn.k_proj"].in_features,
                layers["model.layers.0.self_attn.k_proj"].out_features) == (64, 32)
    else:
        assert all(mora.is_conv1d(layer.base) for layer in layers.values())
        assert (layers["transformer.h.0.attn.c_attn"].in_features,
                layers["transformer.h.0.attn.c_attn"].out_features) == (64, 192)
    torch.testing.assert_close(logits(model, tokens), before, atol=1e-6, rtol=0)  # zero-initialized update

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in n or n.endswith(".M") for n in adapters)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, adapters[n]) for n, p in model.named_parameters() if n.endswith(("lora_B", ".M")))
    tuned = logits(model, tokens)
    assert not torch.allclose(tuned, before, atol=1e-4)

    for layer in mora.adapter_layers(model).values():

        layer.merge()
    torch.testing.assert_close(logits(model, tokens), tuned, atol=1e-5, rtol=1e-5)

    mora.remove_adapters(model)
    assert not mora.adapter_layers(model) and set(model.state_dict()) == original_keys
    fresh = tiny_model(family)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(fresh, tokens), tuned, atol=1e-5, rtol=1e-5)
    assert type(fresh.get_submodule(next(iter(layers)))).__name__ == ("Linear" if family == "llama" else "Conv1D")


@pytest.mark.parametrize("kind", ["lora", "share", "rotate"])
def test_conv1d_layer_equals_the_linear_it_transposes(kind):
    """A wrapped Conv1D (weight in x out) gives F.linear(x, W0 + dW) with W0 = weight.T, in float64."""
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(48, 32).double()  # nf=48 outputs, nx=32 inputs
    layer = mora.LoRALinear(conv, 4) if kind == "lora" else mora.MoRALinear(conv, 4, kind, dense=False)
    with torch.no_grad():
        for p in [p for p in layer.parameters() if p.requires_grad]:
            p.normal_()
    x = torch.randn(5, 32, dtype=torch.float64)
    delta = layer.delta_weight()
    torch.testing.assert_close(delta, layer.delta_from_identity(), atol=1e-12, rtol=0)
    expected = torch.nn.functional.linear(x, conv.weight.t() + delta, conv.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
    w0 = conv.weight.detach().clone()
    layer.merge()  # into W0 through its transposed view, a chunk of rows at a time
    torch.testing.assert_close(conv.weight, w0 + delta.t(), atol=1e-12, rtol=0)
    torch.testing.assert_close(conv(x), expected, atol=1e-10, rtol=0)


# GPT.from_pretrained: HuggingFace GPT-2 weights in model.py's GPT --------------------------------------------------

def saved_tiny_gpt2(folder) -> "transformers.GPT2LMHeadModel":
    model = tiny_model("gpt2")
    model.save_pretrained(folder)
    return model


def test_from_pretrained_matches_huggingface_logits_and_generation(tmp_path):
    from model import GPT
    hf = saved_tiny_gpt2(tmp_path / "tiny-gpt2")
    ours = GPT.from_pretrained(str(tmp_path / "tiny-gpt2")).eval()
    assert (ours.config.n_layer, ours.config.n_embd, ours.config.block_size, ours.config.vocab_size) == (2, 64, 32, 100)
    tokens = torch.randint(0, 100, (3, 20))
    logits, _ = ours(tokens, tokens)
    torch.testing.assert_close(logits, hf(tokens).logits, atol=1e-5, rtol=0)
    greedy = hf.generate(tokens[:, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(tokens[:, :5], 10, temperature=0), greedy)


def test_crop_block_size_keeps_the_first_positions(tmp_path):
    from model import GPT
    saved_tiny_gpt2(tmp_path / "tiny-gpt2")
    full = GPT.from_pretrained(str(tmp_path / "tiny-gpt2")).eval()
    cropped = GPT.from_pretrained(str(tmp_path / "tiny-gpt2")).eval()
    cropped.crop_block_size(16)
    tokens = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(cropped(tokens, tokens)[0], full(tokens, tokens)[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="cropped, not extended"):
        cropped.crop_block_size(17)


def test_from_pretrained_names_the_fix_when_it_cannot_load(tmp_path):
    from model import GPT
    with pytest.raises(OSError, match=r"cannot load GPT-2 weights .*the names are \['gpt2'"):
        GPT.from_pretrained(str(tmp_path / "no-such-folder"))


def test_train_py_offline_without_the_weights_is_one_line(tmp_path):
    """Downloads are opt-in and fail with one line; HF_HUB_OFFLINE stands in for a machine with no network."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--init_from", "gpt2", "--out_dir",
                             str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: --init_from gpt2: cannot load GPT-2 weights")
