"""memorize_uuid.py: the data, the metric, the rank statistics and a tiny end-to-end run.

    python -m pytest -q tests/test_memorize_uuid.py
"""

import json
import re

import pytest
import torch

import data
import memorize_uuid
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


def tiny_base(block_size: int) -> None:
    """A barely pretrained 1-layer GPT in ./base, enough to fine-tune."""
    train.main(["--method", "full", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                "--block_size", str(block_size), "--batch_size", "4", "--max_iters", "4", "--eval_interval", "4",
                "--eval_iters", "1", "--out_dir", "base"])


def test_tiny_end_to_end_run_writes_every_field(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path_factory.getbasetemp() / "data_cache")
    monkeypatch.chdir(tmp_path)
    tiny_base(block_size=80)
    results = memorize_uuid.main(["--base", "base/ckpt.pt", "--methods", "lora,mora", "--ranks", "2", "--pairs", "6",
                                  "--steps", "4", "--eval_every", "2", "--batch_size", "3", "--lrs", "1e-3,1e-2",
                                  "--tag", "tiny"])
    saved = json.load(open(tmp_path / "out" / "uuid" / "tiny" / "results.json"))
    assert saved["best"] == results["best"] and len(saved["runs"]) == 4
    for run in saved["runs"]:
        assert {"method", "rank", "lr", "trainable_params", "curve", "wall_time_s", "spectra"} <= run.keys()
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert all(0 <= p["char_acc"] <= 1 and 0 <= p["exact_match"] <= 1 for p in run["curve"])
        assert len(run["spectra"]) == 6  # query, key, value, output, up, down of the one block
    lora, mora_ = (next(r for r in saved["runs"] if r["method"] == m) for m in ("lora", "mora"))
    assert abs(mora_["trainable_params"] / lora["trainable_params"] - 1) < 0.1  # r=2 on d=32: 1,048 vs 1,152
    assert any(line.startswith("| lora r=2 |") for line in saved["tables"])


def test_base_must_hold_a_whole_example(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path_factory.getbasetemp() / "data_cache")
    monkeypatch.chdir(tmp_path)
    tiny_base(block_size=32)
    with pytest.raises(train.UserError, match="needs 73"):
        memorize_uuid.main(["--base", "base/ckpt.pt", "--steps", "1"])
