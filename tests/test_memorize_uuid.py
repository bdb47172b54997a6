"""memorize_uuid.py: the data and the metrics on hand-made inputs, and tiny end-to-end runs.

    python -m pytest -q tests/test_memorize_uuid.py
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memorize_uuid
import mora
import train

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_pairs_are_deterministic_distinct_version_4_uuids():
    pairs = memorize_uuid.make_pairs(200, seed=3)
    assert pairs == memorize_uuid.make_pairs(200, seed=3) and pairs != memorize_uuid.make_pairs(200, seed=4)
    flat = [u for pair in pairs for u in pair]
    assert all(UUID4.match(u) for u in flat) and len(set(flat)) == 400


def test_char_accuracy_on_hand_made_strings():
    assert memorize_uuid.char_accuracy(["abcd", "wxyz"], ["abcd", "wxyz"]) == (1.0, 1.0)
    assert memorize_uuid.char_accuracy(["abXd", "wxyz"], ["abcd", "wxyz"]) == (7 / 8, 0.5)
    assert memorize_uuid.char_accuracy(["ab", ""], ["abcd", "wxyz"]) == (2 / 8, 0.0)  # missing characters are wrong
    assert memorize_uuid.char_accuracy(["bcda"], ["abcd"]) == (0.0, 0.0)  # position by position


def test_rank_statistics_on_matrices_of_known_rank():
    torch.manual_seed(0)
    low = torch.randn(64, 5, dtype=torch.float64) @ torch.randn(5, 48, dtype=torch.float64)
    stats = memorize_uuid.spectrum_stats(low, threshold=1e-6)
    assert stats["above_threshold"] == 5 and 1 < stats["effective_rank"] <= 5
    flat = memorize_uuid.spectrum_stats(torch.eye(32) * 0.5, threshold=0.1)
    assert flat["above_threshold"] == 32 and abs(flat["effective_rank"] - 32) < 1e-9
    assert memorize_uuid.spectrum_stats(torch.eye(32) * 0.05, threshold=0.1)["above_threshold"] == 0
    assert memorize_uuid.spectrum_stats(torch.full((4, 4), float("nan")), threshold=0.1) is None  # a diverged run


def test_format_floor_is_the_best_constant_answer():
    values = ["ab-4", "cb-4", "ad-4"]  # best constant: "ab-4" (a: 2/3, b: 2/3, "-" and "4": 3/3)
    assert memorize_uuid.format_floor(values) == (2 + 2 + 3 + 3) / 12
    uuids = [v for _, v in memorize_uuid.make_pairs(400, seed=0)]
    assert 0.17 < memorize_uuid.format_floor(uuids) < 0.23  # dashes, the version digit, 1/16 of the rest


def curve(*accuracies):
    return [{"step": 100 * i, "char_acc": a} for i, a in enumerate(accuracies)]


def test_sustained_step_is_where_the_curve_stays_above():
    assert memorize_uuid.sustained_step(curve(0.2, 0.99, 0.75, 1.0, 0.87, 1.0, 1.0), 0.9) == 500  # not 100
    assert memorize_uuid.sustained_step(curve(0.2, 0.95, 0.9, 0.91), 0.9) == 100  # "at or above"
    assert memorize_uuid.sustained_step(curve(0.2, 0.95, 0.85), 0.9) is None  # ends below: not reached
    assert memorize_uuid.sustained_step(curve(0.95, 0.96), 0.9) == 0


def test_encoding_puts_the_loss_on_every_token_and_masks_the_padding(tiny_bpe_name):
    enc = train.get_tokenizer(tiny_bpe_name)
    pairs = memorize_uuid.make_pairs(20, seed=0)
    every = memorize_uuid.encode(pairs, enc)
    lengths = {len(p) for p in every["prompts"]}
    assert len(lengths) > 1  # under BPE, keys take different numbers of tokens
    for i, (key, v) in enumerate(pairs):
        prompt = enc.encode_ordinary(f"{key}:")
        answer = enc.encode_ordinary(v) + [enc.eot_token]
        assert every["sequences"][i, :len(prompt) + len(answer)].tolist() == prompt + answer
        assert every["targets"][i].tolist() == (prompt + answer)[1:] + [-1] * (every["targets"].shape[1] - len(prompt)
                                                                               - len(answer) + 1)


def test_demo_runs_each_method_once_and_reports_it(workdir, tiny_base, capsys):
    tiny_base(block_size=80)
    runs = memorize_uuid.main(["--base", "base/ckpt.pt", "--methods", "lora,mora", "--rank", "2", "--pairs", "6",
                               "--steps", "4", "--eval_every", "2", "--batch_size", "3",
                               "--lrs", "lora=1e-2,mora=3e-2"])
    assert [(r["method"], r["lr"], r["seed"]) for r in runs] == [("lora", 1e-2, 1), ("mora", 3e-2, 1)]
    for run in runs:
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert all(0 <= p["char_acc"] <= 1 and 0 <= p["exact_match"] <= 1 for p in run["curve"])
        assert len(run["spectra"]) == 6 and 0.1 < run["format_floor"] < 0.5  # 6 pairs: a high floor
    lora, mora_ = runs
    assert lora["spectra"]["h.0.attn.query"]["above_threshold"] <= 2  # a rank-2 update
    assert abs(mora_["trainable_params"] / lora["trainable_params"] - 1) < 0.1  # r=2 on d=32: 1,048 vs 1,152
    out = capsys.readouterr().out
    assert "6 key:value pairs (values like " in out and "one seed: a demo" in out
    assert "lora r=2 (1,152 trainable, lr 0.01): at step 4 " in out and "mora r=2 (1,048 trainable, lr 0.03)" in out


def test_finetune_steps_through_train_step(workdir, tiny_base, monkeypatch):
    """The demo's loop is train.py's step: one call per fine-tuning step, with the schedule's rate."""
    tiny_base(block_size=80)
    calls, real_step = [], train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a, **k: calls.append(a[4]) or real_step(*a, **k))
    memorize_uuid.main(["--base", "base/ckpt.pt", "--methods", "mora", "--rank", "2", "--pairs", "4", "--steps", "40",
                        "--eval_every", "40", "--batch_size", "2"])
    cfg = train.parse_args(["--method", "mora", "--lr", "2e-2", "--max_iters", "40", "--warmup", "2"])  # RATES
    assert calls == pytest.approx([train.get_lr(step, cfg) for step in range(40)])


def test_a_constant_rate_and_loras_alpha_reach_the_step(workdir, tiny_base, monkeypatch):
    """--min_lr_ratio 1 holds the rate after warmup (a run that does not decay to nothing before it converges);
    --alpha_r sets LoRA's scaling alpha / r."""
    tiny_base(block_size=80)
    calls, real_step = [], train.train_step
    monkeypatch.setattr(train, "train_step", lambda *a, **k: calls.append((a[0], a[4])) or real_step(*a, **k))
    memorize_uuid.main(["--base", "base/ckpt.pt", "--methods", "lora", "--rank", "2", "--pairs", "4", "--steps", "40",
                        "--eval_every", "40", "--batch_size", "2", "--min_lr_ratio", "1", "--alpha_r", "4",
                        "--lrs", "lora=1e-2"])
    rates = [lr for _, lr in calls]
    assert rates[:2] == pytest.approx([1e-2 / 3, 2e-2 / 3]) and rates[2:] == pytest.approx([1e-2] * 38)
    assert {layer.scaling for layer in mora.adapter_layers(calls[0][0]).values()} == {4.0}  # alpha 8 / r 2


def test_base_must_hold_a_whole_example(workdir, tiny_base):
    tiny_base(block_size=32)
    with pytest.raises(train.UserError, match="example needs 73"):  # 74 tokens, of which the model reads 73
        memorize_uuid.main(["--base", "base/ckpt.pt", "--steps", "1"])


def test_the_base_is_cached_under_its_flags_and_a_forks_change_takes_effect(workdir, monkeypatch):
    """load_base reads CPU_BASE when it is called (a fork may change it) and keys the cache on those flags (and on the
    training code): the same flags reuse the base, other flags pretrain another."""
    trained, real_main = [], train.main
    monkeypatch.setattr(train, "main", lambda argv: trained.append(argv) or real_main(argv))
    tiny = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "80", "--batch_size", "4",
            "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1"]
    monkeypatch.setattr(memorize_uuid, "CPU_BASE", tiny)
    first = memorize_uuid.load_base(None)
    assert memorize_uuid.load_base(None)["source"] == first["source"] and len(trained) == 1  # reused
    monkeypatch.setattr(memorize_uuid, "CPU_BASE", tiny[:-6] + ["--max_iters", "3", "--eval_interval", "3",
                                                                  "--eval_iters", "1"])
    second = memorize_uuid.load_base(None)
    assert second["source"] != first["source"] and len(trained) == 2  # another base, pretrained anew
    assert not torch.equal(second["state"]["wte.weight"], first["state"]["wte.weight"])


def test_a_base_fits_an_example_of_one_token_more_than_its_block(workdir, tiny_base):
    tiny_base(block_size=73)  # examples of 74 tokens: the model reads the first 73
    memorize_uuid.main(["--base", "base/ckpt.pt", "--methods", "mora", "--rank", "2", "--pairs", "2", "--steps", "1",
                        "--eval_every", "1", "--batch_size", "2"])


@pytest.mark.parametrize("flags,message", [
    (["--lrs", "0.01"], "--lrs 0.01: write a rate per method, as full=3e-3,lora=1e-3,mora=2e-2"),
    (["--methods", "lora", "--lrs", "lora=1e-3,mora=x"], "--lrs lora=1e-3,mora=x: write a rate per method"),
    (["--methods", "lora", "--compress", "share"], "--compress does nothing without mora in --methods lora"),
    (["--methods", "mora", "--alpha_r", "16"], "--alpha_r does nothing without lora in --methods mora"),
    (["--methods", "full,dora"], "--methods full,dora must be among full, lora, mora")])
def test_bad_flags_end_in_one_line_with_exit_code_2(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        memorize_uuid.main(flags)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_mistake_in_the_files_is_one_line_and_exit_code_2(tmp_path):
    script = Path(memorize_uuid.__file__)
    result = subprocess.run([sys.executable, str(script), "--base", str(tmp_path / "missing.pt")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    missing = tmp_path / "missing.pt"
    assert result.stderr.strip().splitlines() == [f"memorize_uuid.py: error: no checkpoint at {missing}"]
