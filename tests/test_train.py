"""train.py end to end on tiny configs (CPU, seconds each): every method learns, restarts, resume, DDP, bad input.

    python -m pytest -q tests/test_train.py
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import mora
import train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "8",
        "--eval_iters", "4", "--warmup", "5", "--lr", "1e-2", "--log_interval", "1", "--rank", "2"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path_factory.getbasetemp() / "data_cache")


def run(out_dir: Path, *args: str) -> dict:
    return train.main(TINY + ["--out_dir", str(out_dir), *args])


def records(out_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, open(out_dir / "metrics.jsonl")) if r["kind"] == kind]


@pytest.mark.parametrize("method", train.METHODS)
def test_every_method_learns(tmp_path, method):
    summary = run(tmp_path, "--method", method, "--max_iters", "60", "--eval_interval", "30", "--merge_every", "20")
    evals = records(tmp_path, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"], evals
    assert summary["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert len(records(tmp_path, "train")) == 60
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 60 and checkpoint["config"]["adapter"]["method"] == method


def test_adapter_pretraining_trains_embeddings_norms_head_and_adapters_only(tmp_path):
    cfg = train.parse_args(TINY + ["--method", "mora"])
    cfg.model.vocab_size = 257
    model = train.adapt(train.GPT(cfg.model), cfg.adapter, pretraining=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.endswith(".M") or name.startswith(("wte.", "wpe.", "ln_f.")) or ".ln_" in name
               for name in trainable)
    assert sum(name.endswith(".M") for name in trainable) == 2 * 6  # 6 projections per block
    assert not any(".base." in name for name in trainable)


def test_restarts_happen_on_schedule_and_change_the_base_weights(tmp_path):
    run(tmp_path, "--method", "remora", "--max_iters", "30", "--eval_interval", "30", "--merge_every", "10")
    assert [r["iter"] for r in records(tmp_path, "restart")] == [10, 20]
    cfg = train.parse_args(TINY + ["--method", "remora"])
    lrs = [train.get_lr(it, cfg) for it in range(cfg.adapter.merge_every * 2 + 5)]
    at = cfg.adapter.merge_every
    assert lrs[at] < 0.1 * lrs[at - 1] and lrs[at + 10] > lrs[at]  # jagged: re-warm after each restart


def test_a_diverged_run_stops_with_a_summary_instead_of_merging_nan(tmp_path):
    summary = run(tmp_path, "--method", "relora", "--lr", "1e30", "--max_iters", "40", "--merge_every", "10",
                  "--log_interval", "50")  # caught at the first restart, before its merge
    assert summary["diverged_at"] == 10 and math.isnan(summary["final_val_loss"])
    assert records(tmp_path, "diverged") == [{"kind": "diverged", "iter": 10}] and not records(tmp_path, "restart")


def test_restart_forgets_adapter_optimizer_state_only():
    cfg = train.parse_args(TINY + ["--method", "relora"])
    cfg.model.vocab_size = 257
    model = train.adapt(train.GPT(cfg.model), cfg.adapter, pretraining=True)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    idx = torch.randint(0, 257, (2, 32))
    model(idx, idx)[1].backward()
    optimizer.step()
    adapter_params = [p for layer in mora.adapter_layers(model).values() for p in layer.parameters() if p.requires_grad]
    assert all(p in optimizer.state for p in adapter_params)
    train.restart_adapters(model, optimizer)
    assert not any(p in optimizer.state for p in adapter_params)
    assert model.wte.weight in optimizer.state  # the embeddings keep their Adam moments
    assert all(torch.count_nonzero(layer.lora_B) == 0 for layer in mora.adapter_layers(model).values())


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    args = ["--method", "remora", "--max_iters", "30", "--eval_interval", "10", "--merge_every", "15"]
    run(tmp_path / "straight", *args)

    real_get_lr = train.get_lr

    def interrupt_at_17(it, cfg):  # Ctrl-C in the middle of iteration 17
        if it == 17:
            raise KeyboardInterrupt
        return real_get_lr(it, cfg)

    monkeypatch.setattr(train, "get_lr", interrupt_at_17)
    with pytest.raises(SystemExit) as stop:
        run(tmp_path / "resumed", *args)
    assert stop.value.code == 130
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["iter_num"] == 10  # intact
    monkeypatch.setattr(train, "get_lr", real_get_lr)
    run(tmp_path / "resumed", *args, "--init_from", "resume")
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        straight = [(r["iter"], r[key]) for r in records(tmp_path / "straight", kind)]
        resumed = [(r["iter"], r[key]) for r in records(tmp_path / "resumed", kind)]
        assert resumed == straight


def test_finetune_from_a_pretrained_checkpoint_trains_adapters_only(tmp_path):
    run(tmp_path / "base", "--method", "full", "--max_iters", "20", "--eval_interval", "20")
    summary = train.main(["--method", "mora", "--rank", "2", "--init_from", str(tmp_path / "base" / "ckpt.pt"),
                          "--max_iters", "20", "--eval_interval", "20", "--eval_iters", "4",
                          "--out_dir", str(tmp_path / "ft")])
    checkpoint = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    assert checkpoint["config"]["model"]["n_embd"] == 32  # the architecture came from the pretrained model
    m_sizes = [v.numel() for k, v in checkpoint["model"].items() if k.endswith(".M")]
    assert summary["trainable_params"] == sum(m_sizes) and len(m_sizes) == 12
    with pytest.raises(train.UserError, match="starts from a full one"):
        train.main(["--method", "lora", "--init_from", str(tmp_path / "ft" / "ckpt.pt"),
                    "--out_dir", str(tmp_path / "x")])


def test_two_process_ddp_run_agrees_across_ranks(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
               "--method", "mora", "--max_iters", "10", "--eval_interval", "5", "--out_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    (summary,) = records(tmp_path, "summary")
    first, second = summary["val_loss_per_rank"]
    assert first == second  # identical weights on both ranks give identical losses on the same eval batches


# Bad input: one clear line, nothing half-written -------------------------------------------------------------------

def test_cli_error_is_one_line_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "missing.txt"), "--out_dir",
                             str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"train.py: error: --data {tmp_path / 'missing.txt'}: no such file"]


@pytest.mark.parametrize("content,message", [(None, "no such file"), (b"", "the file is empty"),
                                             (b"caf\xe9 au lait", "not UTF-8"),
                                             (b"too short " * 5, "fewer than one block")])
def test_bad_data_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(data.DataError, match=message) as error:
        run(tmp_path / "out", "--data", str(path), "--max_iters", "2")
    assert str(error.value).startswith(f"--data {path}: ")  # names the file the user passed


@pytest.mark.parametrize("args,message", [(["--rank", "0"], "--rank: expected a positive number"),
                                          (["--method", "dora"], "--method: invalid choice"),
                                          (["--compress", "zip"], "--compress: invalid choice"),
                                          (["--max_iters", "2.5"], "expected an integer"),
                                          (["--bogus", "1"], "unrecognized arguments: --bogus")])
def test_bad_flags_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, *args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_large_numbers_in_scientific_notation(tmp_path):
    assert train.parse_args(["--max_iters", "5e3"]).train.max_iters == 5000


@pytest.mark.parametrize("args,message", [(["--rank", "64"], r"an adapter of 4,096 parameters; lower --rank"),
                                          (["--targets", "c_attn"], r"\['c_attn'\] match no linear layer")])
def test_bad_adapter_settings(tmp_path, args, message):
    with pytest.raises(train.UserError, match=message):
        run(tmp_path, "--method", "mora", *args)


def test_unwritable_out_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(train.UserError, match="cannot write to --out_dir"):
        run(tmp_path / "a_file" / "out")


def test_resume_refuses_other_architecture_or_method_and_corrupt_files(tmp_path):
    run(tmp_path, "--method", "mora", "--max_iters", "10", "--eval_interval", "10")
    with pytest.raises(train.UserError, match=r"--method mora \(this run: lora\)"):
        run(tmp_path, "--method", "lora", "--init_from", "resume")
    with pytest.raises(train.UserError, match=r"--n_embd 32 \(this run: 64\)"):
        run(tmp_path, "--method", "mora", "--init_from", "resume", "--n_embd", "64")
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    with pytest.raises(train.UserError, match="corrupt or truncated"):
        run(tmp_path, "--method", "mora", "--init_from", "resume")
    with pytest.raises(train.UserError, match="no checkpoint at"):
        run(tmp_path / "empty", "--init_from", "resume")


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    train.save_checkpoint(path, {"iter_num": 1})

    def save_half_then_interrupt(obj, f):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"iter_num": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"iter_num": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_unknown_tokenizer_offline_message():
    with pytest.raises(data.DataError, match="cannot load tiktoken encoding 'no_such_encoding'.*--tokenizer bytes"):
        data.get_tokenizer("no_such_encoding")


def test_default_training_step_runs_every_layers_operators(monkeypatch):
    """python train.py --method mora: every adapted layer's f_comp and f_decomp run in the step, whichever route the
    layer takes (small layers build W0 + dW from them), and M gets its gradient through them."""
    cfg = train.parse_args(["--method", "mora", "--batch_size", "2"])
    cfg.model.vocab_size = 257
    model = train.adapt(train.GPT(cfg.model), cfg.adapter, pretraining=True)
    called = []
    for name in ("f_comp", "f_decomp"):
        original = getattr(mora.Rotate, name)
        monkeypatch.setattr(mora.Rotate, name, lambda self, x, name=name, original=original:
                            called.append((name, id(self))) or original(self, x))
    with torch.no_grad():  # a non-zero M, so that its gradient depends on the operators on both sides
        for layer in mora.adapter_layers(model).values():
            layer.M.normal_(std=0.01)
    idx = torch.randint(0, 257, (2, cfg.model.block_size))
    model(idx, idx)[1].backward()
    layers = mora.adapter_layers(model).values()
    assert len(layers) == 4 * 6 and all(layer.dense for layer in layers)  # the default GPT's layers are small
    for name in ("f_comp", "f_decomp"):
        assert {id(layer.compression) for layer in layers} <= {i for n, i in called if n == name}
    assert all(layer.M.grad is not None and layer.M.grad.abs().sum() > 0 for layer in layers)


def test_finetune_gpt2_weights_with_a_bpe_tokenizer(tmp_path, tiny_gpt2_folder, tiny_bpe_name):
    """--init_from a HuggingFace GPT-2 folder (what --init_from gpt2 finds after its download)."""
    args = ["--method", "mora", "--rank", "2", "--init_from", tiny_gpt2_folder, "--tokenizer", tiny_bpe_name,
            "--block_size", "24", "--batch_size", "4", "--max_iters", "6", "--eval_interval", "3", "--eval_iters", "2"]
    summary = train.main(args + ["--out_dir", str(tmp_path / "ft")])
    checkpoint = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)
    config = checkpoint["config"]
    assert (config["model"]["n_embd"], config["model"]["block_size"], config["data"]["tokenizer"]) == \
        (64, 24, "tiny-bpe")  # architecture from the weights, context cropped by the flag
    assert checkpoint["model"]["wpe.weight"].shape == (24, 64)
    m_sizes = [v.numel() for k, v in checkpoint["model"].items() if k.endswith(".M")]
    assert summary["trainable_params"] == sum(m_sizes) and len(m_sizes) == 12  # only the adapters train
    evals = records(tmp_path / "ft", "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    with pytest.raises(train.UserError, match="cropped, not extended"):
        train.main(["--method", "mora", "--init_from", tiny_gpt2_folder, "--tokenizer", tiny_bpe_name,
                    "--block_size", "97", "--out_dir", str(tmp_path / "x")])  # the tiny model has 96 positions
