"""The README cannot rot: every Python block in it runs here, and every printed figure in its teaching part is what
the named command prints.

    python -m pytest -q tests/test_readme.py
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mora
from experiments.worked_example import budget_table, worked_example

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_has_the_blocks_these_tests_run():
    assert len(blocks("python")) == 2 and len(blocks("text")) == 1


def test_adapter_example_on_this_projects_gpt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    exec(blocks("python")[0], namespace)
    assert "trainable parameters" in capsys.readouterr().out
    layers = [f"h.{i}.{p}" for i in range(2) for p in ("attn.query", "attn.key", "attn.value", "attn.output",
                                                       "mlp.up", "mlp.down")]
    assert set(torch.load("adapter.pt")) == {f"{layer}.{key}" for layer in layers for key in ("M", "in_perm",
                                                                                                "out_perm")}
    assert not mora.adapter_layers(namespace["model"])
    tokens = namespace["tokens"]  # the example trains next-token prediction, not the identity
    logits, loss = namespace["model"](tokens[:, :-1], tokens[:, 1:])
    assert logits.shape == (4, 64, 257)


def test_huggingface_example_with_a_tiny_gpt2_in_place_of_the_download(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers", reason="pip install transformers for this README block")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    tiny = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64,
                                                                n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    asked = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda name, *a, **k: asked.append(name) or tiny)
    exec(blocks("python")[1], {})
    assert asked == ["gpt2"]
    saved = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2-mora")
    assert type(saved.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_worked_example_and_budget_table_are_what_the_command_prints():
    printed = subprocess.run([sys.executable, "-m", "experiments.worked_example"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    assert printed == worked_example() + "\n\n" + budget_table() + "\n"
    shown = blocks("text")[0].rstrip()
    assert worked_example().startswith(shown + "\n\n") and shown.startswith("share: rank 4")
    assert budget_table() in README


def test_worked_example_shows_each_compression_and_its_rank():
    ranks = dict(re.findall(r"(\w+): rank (\d+)", worked_example()))
    assert ranks == {"truncate": "4", "share": "4", "share_contiguous": "4", "decouple": "8", "rotate": "8"}


def test_ci_runs_the_readme_test_command():
    command = "pip install -r requirements.txt && python -m pytest -q"
    assert f"```sh\n{command}\n```" in README
    assert command in (REPO / ".ci" / "run").read_text()
