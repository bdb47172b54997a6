"""Shared fixtures: a tiny BPE tokenizer built offline, a tiny HuggingFace GPT-2 saved to a folder, a working folder
with a barely pretrained base model for the UUID experiment."""

import functools
import os
import sys

import pytest
import tiktoken
import torch

import train



def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", help="run only the GPU tests (marked gpu), on CUDA; about 3 "
                     "minutes on one H200. GPU_TESTS_DEVICE=cpu runs them on the CPU instead (their code path)")


def pytest_configure(config):
    """The suite checks float32 arithmetic on the CPU, exactly in places, as CI runs it: on a machine with a GPU, device
    "auto" must still mean the CPU. So CUDA is hidden from this process and the scripts it starts (before anything
    asks torch for a GPU), MPS from this one (the scripts whose device matters get --device cpu). --gpu turns this
    around: only the tests marked gpu run, on the GPU."""
    config.addinivalue_line("markers", "gpu: a GPU test: runs with --gpu only, on CUDA (tests/test_gpu.py)")
    if not config.getoption("--gpu"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    no_mps = functools.wraps(torch.backends.mps.is_available)(lambda: False)  # torch 2.15's dynamo reads __wrapped__
    torch.backends.mps.is_available = no_mps


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--gpu")
    skipped = [item for item in items if (item.get_closest_marker("gpu") is not None) != wanted]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if item not in skipped]

# A few merges over the bytes, so that tokens are not one byte each and UUIDs split unevenly.
MERGES = [b"4a", b"-4", b"ab", b"12", b"c3", b"f0", b"9d", b"e ", b"th", b"the", b"in", b"ab12", b"-8", b"00"]


def tiny_bpe() -> tiktoken.Encoding:
    ranks = {bytes([i]): i for i in range(256)}
    for merge in MERGES:
        ranks[merge] = len(ranks)
    return tiktoken.Encoding(name="tiny-bpe", pat_str=r"(?s).{1,256}", mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


@pytest.fixture
def tiny_bpe_name(monkeypatch) -> str:
    """Registers the tiny BPE as --tokenizer tiny-bpe."""
    monkeypatch.setitem(train.ENCODINGS, "tiny-bpe", tiny_bpe)
    return "tiny-bpe"


@pytest.fixture
def tiny_gpt2_folder(tmp_path_factory, monkeypatch) -> str:
    """A randomly initialized 2-layer, 64-wide HuggingFace GPT-2 saved by save_pretrained() (as
    GPT.from_pretrained("gpt2") would find it after a download), with the tiny BPE standing in for its tokenizer,
    tiktoken's gpt2, which would download."""
    transformers = pytest.importorskip("transformers", reason="pip install transformers to run the GPT-2 tests")
    monkeypatch.setitem(train.ENCODINGS, "gpt2", tiny_bpe)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tiny_bpe().n_vocab, n_positions=96, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder: out/ and base/ go there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fork_compression(tmp_path, monkeypatch):
    """A fork's compression in its own module: (its --compress value, a function that edits its source). The module
    is imported afresh in each test: an earlier test's copy in sys.modules would hide this one's file."""
    path = tmp_path / "fork_compression.py"
    path.write_text("import mora\n\n\nclass Mine(mora.Share):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fork_compression", raising=False)
    yield "fork_compression:Mine", lambda: path.write_text("import mora\n\n\nclass Mine(mora.Share):\n    x = 1\n")
    sys.modules.pop("fork_compression", None)


@pytest.fixture
def tiny_base(workdir):
    """tiny_base(block_size) pretrains a barely trained 1-layer GPT into ./base, enough to fine-tune."""
    def pretrain(block_size: int) -> None:
        train.main(["--method", "full", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size",
                    str(block_size), "--batch_size", "4", "--max_iters", "4", "--eval_interval", "4",
                    "--eval_iters", "1", "--out_dir", "base"])
    return pretrain
