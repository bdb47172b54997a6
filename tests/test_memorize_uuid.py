"""memorize_uuid.py: the data, the metrics and statistics on hand-made inputs, and tiny end-to-end runs.

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


def test_reach_summary_counts_not_reached_as_infinite():
    assert memorize_uuid.reach_summary([500, 300, 400]) == "400 (300-500)"
    assert memorize_uuid.reach_summary([500, None, None]) == "not reached (500-not reached)"
    assert memorize_uuid.reach_summary([None, 300]) == "not reached (300-not reached)"  # median of 300 and infinity
    assert memorize_uuid.reach_summary([700]) == "700" and memorize_uuid.reach_summary([None]) == "not reached"


def test_paired_difference_and_its_interval():
    d = memorize_uuid.paired_difference([0.9, 0.8, 0.7], [0.5, 0.5, 0.5])
    assert d["diffs"] == pytest.approx([0.4, 0.3, 0.2]) and d["mean"] == pytest.approx(0.3)
    assert d["std"] == pytest.approx(0.1) and (d["min"], d["max"]) == pytest.approx((0.2, 0.4))
    half = 4.303 * 0.1 / 3 ** 0.5  # Student t with 2 degrees of freedom
    assert d["ci95"] == pytest.approx((0.3 - half, 0.3 + half))
    assert memorize_uuid.paired_difference([0.9], [0.5])["std"] == 0.0  # one seed: a demo, no interval


def test_tuning_picks_the_best_rate_and_warns_at_an_edge():
    assert memorize_uuid.pick_rate([1e-3, 1e-2, 1e-1], [0.2, 0.6, 0.4]) == (1e-2, None)
    lr, warning = memorize_uuid.pick_rate([1e-2, 1e-1], [0.6, 0.4])
    assert lr == 1e-2 and "edge of the grid" in warning


def test_learning_rate_flags():
    assert memorize_uuid.parse_lrs("1e-2,3e-2", ["lora", "mora"]) == {"lora": [1e-2, 3e-2], "mora": [1e-2, 3e-2]}
    assert memorize_uuid.parse_lrs("lora=1e-2,mora=3e-2", ["lora", "mora"]) == {"lora": [1e-2], "mora": [3e-2]}
    assert memorize_uuid.parse_lrs("lora=1e-3:1e-2,mora=3e-2", ["lora", "mora"]) == {"lora": [1e-3, 1e-2],
                                                                                     "mora": [3e-2]}
    with pytest.raises(train.UserError, match=r"no rate for \['full'\]"):
        memorize_uuid.parse_lrs("lora=1e-2", ["full", "lora"])
    for bad in ("1e-2,fast", "lora=1e-2=3e-2"):
        with pytest.raises(train.UserError, match=f"--lrs {bad} is not a learning-rate grid"):
            memorize_uuid.parse_lrs(bad, ["lora"])


def test_encoding_masks_padding_and_puts_value_loss_on_the_value(tiny_bpe_name):
    enc = data.get_tokenizer(tiny_bpe_name)
    pairs = memorize_uuid.make_pairs(20, seed=0)
    every = memorize_uuid.encode(pairs, enc, "all")
    lengths = {len(p) for p in every["prompts"]}
    assert len(lengths) > 1  # under BPE, keys take different numbers of tokens
    value = memorize_uuid.encode(pairs, enc, "value")
    for i, (key, v) in enumerate(pairs):
        prompt = enc.encode_ordinary(f"{key}:")
        answer = enc.encode_ordinary(v) + [enc.eot_token]
        assert every["sequences"][i, :len(prompt) + len(answer)].tolist() == prompt + answer
        assert every["targets"][i].tolist() == (prompt + answer)[1:] + [-1] * (every["targets"].shape[1] - len(prompt)
                                                                               - len(answer) + 1)
        kept = [t for t in value["targets"][i].tolist() if t != -1]
        assert kept == answer  # exactly the value's tokens and <eot>: the first value token included


def tiny_base(block_size: int) -> None:
    """A barely pretrained 1-layer GPT in ./base, enough to fine-tune."""
    train.main(["--method", "full", "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
                "--block_size", str(block_size), "--batch_size", "4", "--max_iters", "4", "--eval_interval", "4",
                "--eval_iters", "1", "--out_dir", "base"])


@pytest.fixture
def workdir(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path_factory.getbasetemp() / "data_cache")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tuned_multi_seed_run_writes_every_field_and_resumes(workdir, monkeypatch):
    tiny_base(block_size=80)
    args = ["--base", "base/ckpt.pt", "--methods", "lora,mora", "--ranks", "2", "--pairs", "6", "--steps", "4",
            "--eval_every", "2", "--batch_size", "3", "--lrs", "1e-3,1e-2", "--seeds", "1,2", "--tag", "tiny"]
    assert len(memorize_uuid.main(args + ["--tune_only"])["tuning"]) == 2
    assert len(list((workdir / "out" / "uuid" / "runs").glob("*.json"))) == 4  # 2 methods x 2 rates on seed 0
    results = memorize_uuid.main(args)
    saved = json.load(open(workdir / "out" / "uuid" / "tiny" / "results.json"))
    assert saved["tables"] == results["tables"] and len(saved["runs"]) == 4  # 2 methods x 2 reporting seeds
    assert {run["seed"] for run in saved["runs"]} == {1, 2}  # the tuning seed 0 is not reported
    assert len(list((workdir / "out" / "uuid" / "runs").glob("*.json"))) == 2 * 2 + 4  # + 2 methods x 2 rates
    for run in saved["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]
        assert all(0 <= p["char_acc"] <= 1 and 0 <= p["exact_match"] <= 1 for p in run["curve"])
        assert len(run["spectra"]) == 6 and 0.1 < run["format_floor"] < 0.5  # 6 pairs: a high floor
    lora, mora_ = (next(r for r in saved["runs"] if r["method"] == m) for m in ("lora", "mora"))
    assert abs(mora_["trainable_params"] / lora["trainable_params"] - 1) < 0.1  # r=2 on d=32: 1,048 vs 1,152
    assert any(line.startswith("| lora r=2 |") for line in saved["tables"])
    assert any("Paired difference MoRA - LoRA" in line for line in saved["tables"])
    assert sum("tuning seed 0" in line and "edge of the grid" in line for line in saved["tables"]) == 2

    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert memorize_uuid.main(args)["tables"] == results["tables"]
    one_seed = memorize_uuid.main(args[:-4] + ["--seeds", "1", "--tag", "tiny"])["tables"]  # a demo: no spread
    assert "±" not in next(line for line in one_seed if line.startswith("| lora r=2 |"))
    assert any("| none: one seed |" in line for line in one_seed)


def test_reporting_on_the_tuning_seed_is_refused(workdir):
    with pytest.raises(SystemExit):
        memorize_uuid.main(["--base", "base/ckpt.pt", "--seeds", "0,1", "--tune_seed", "0"])


def test_base_must_hold_a_whole_example(workdir):
    tiny_base(block_size=32)
    with pytest.raises(train.UserError, match="example needs 74"):
        memorize_uuid.main(["--base", "base/ckpt.pt", "--steps", "1"])


def test_gpu_preset_code_path_on_gpt2_weights_with_bpe_in_bf16(workdir, tiny_gpt2_folder, tiny_bpe_name):
    """--preset gpu's own path (GPT-2 weights from a HuggingFace folder, a BPE tokenizer, bf16 autocast, tuning on
    a grid), at toy sizes on the CPU."""
    results = memorize_uuid.main(["--preset", "gpu", "--base", tiny_gpt2_folder, "--tokenizer", tiny_bpe_name,
                                  "--pairs", "4", "--steps", "2", "--eval_every", "1", "--batch_size", "2",
                                  "--seeds", "1", "--lrs", "1e-3,1e-2", "--device", "cpu", "--dtype", "bfloat16"])
    assert results["dtype"] == "bfloat16" and results["estimated_flops"] > 0
    assert {(r["method"], r["seed"]) for r in results["runs"]} == {("full", 1), ("lora", 1), ("mora", 1)}
    assert all(len(r["curve"]) == 3 for r in results["runs"])
