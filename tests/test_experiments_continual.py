"""experiments/continual.py: prose base, then code, every method at its pick; adaptation and forgetting (toy, CPU).

    python -m pytest -q tests/test_experiments_continual.py
"""

import argparse
import importlib.util
import json

import pytest
import torch

import train
from experiments import continual, corpus, pretraining
from experiments.harness import pyplot as plt
from model import GPT, GPTConfig


@pytest.fixture
def code_corpus(tmp_path, monkeypatch):
    """A small library of code in place of the standard library's 12 MB (tokenized once per run: seconds each)."""
    monkeypatch.chdir(tmp_path)
    for i in range(30):
        (tmp_path / "lib" / f"m{i}.py").parent.mkdir(exist_ok=True)
        (tmp_path / "lib" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 8)
    corpus.build(str(tmp_path / "lib"), "code")
    monkeypatch.setattr(pretraining, "stdlib_corpus", lambda: "code")
    return tmp_path


def test_adaptation_and_forgetting_at_each_pick(code_corpus, monkeypatch):
    args = ["--preset", "toy", "--tune_seeds", "0", "--seeds", "1,2"]
    results = continual.main(args)
    rows = results["rows"]
    assert list(rows) == ["full", "lora", "mora", "relora", "remora", "mora share", "remora share"]
    base = torch.load("out/continual/toy/base/full-lr0.01-seed1337/ckpt.pt", weights_only=True)
    model = GPT(GPTConfig.of(base["config"]))
    model.load_state_dict(base["model"])
    for seed, before in zip((1, 2), rows["lora"]["before"]):  # step 0: the base on the prose, on this seed's batches
        flags = argparse.Namespace(**{**base["config"], "seed": seed, "eval_iters": 2, "data": "pydoc"})
        prose = train.prepare(flags)["val"]
        assert before == pytest.approx(train.evaluate(model, prose, flags, torch.device("cpu"),
                                                      torch.autocast("cpu", enabled=False)), abs=1e-6)
        assert all(row["before"][seed - 1] == pytest.approx(before, abs=1e-6) for row in rows.values())
    for row in rows.values():
        assert row["forgetting"] == [a - b for a, b in zip(row["after"], row["before"])]
        for out_dir, loss in zip(row["dirs"], row["losses"]):
            records = [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl")]
            assert records[0]["data"] == "code" and records[0]["init_from"].endswith("ckpt.pt")
            assert loss == [r["val_loss"] for r in records if r["kind"] == "eval"][-1]
    assert "--compress" not in str(rows["mora"]["dirs"]) and "share" in rows["mora share"]["dirs"][0]
    gap = next(line for line in results["tables"] if line.startswith("| lora - mora |")).split(" | ")
    assert float(gap[1]) == pytest.approx(sum(a - b for a, b in zip(rows["lora"]["losses"], rows["mora"]["losses"]))
                                          / 2, abs=1e-4)
    assert any(line.startswith("tuning seeds [0], mora share:") for line in results["tables"])

    # The prose's evaluations leave training as it was: the same run without them, bitwise.
    out_dir = rows["mora"]["dirs"][0]
    flags = next(json.loads(line) for line in open(f"{out_dir}/metrics.jsonl"))
    plain = pretraining.run("out/plain", "mora", rows["mora"]["lr"], 1, [
        "--init_from", flags["init_from"], "--data", "code", *continual.PRESETS["toy"]["flags"].split()])
    mine = [json.loads(line) for line in open(f"{out_dir}/metrics.jsonl")]
    assert [r["val_loss"] for r in plain if r["kind"] == "eval"] == [r["val_loss"] for r in mine if r["kind"] == "eval"]
    if importlib.util.find_spec("matplotlib"):
        assert (code_corpus / "out" / "continual" / "toy" / "continual.png").exists() and not plt().get_fignums()

    train_main = train.main
    monkeypatch.setattr(train, "main", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert continual.main(args)["tables"] == results["tables"]
    monkeypatch.setattr(train, "main", train_main)  # sharing at rotate's picks: no tuning, the rows say so
    borrowed = continual.main(args + ["--share_rates", "rotate"])
    for method in ("mora", "remora"):
        assert borrowed["rows"][f"{method} share"]["lr"] == rows[method]["lr"]
        assert any(line.startswith(f"| {method} share | ") and "(rotate's) |" in line for line in borrowed["tables"])
    assert not any(line.startswith("tuning seeds [0], mora share:") for line in borrowed["tables"])
    assert "mora share, remora share: not tuned, at rotate's picks (--share_rates)" in borrowed["tables"]


def test_a_part_stops_when_its_time_is_spent(code_corpus, capsys):
    stopped = continual.main(["--preset", "toy", "--tune_seeds", "0", "--seeds", "1,2", "--minutes", "1e-4"])
    assert stopped == {"stage": "tuning", "done": 1, "of": 10}  # the base, then one run: each part trains one
    assert "run the same command again" in capsys.readouterr().out
