"""experiments/capacity.py: a run's plateau and stored bits read by hand, and the whole toy study: its stages in parts
that resume, tuned picks, the ladder where rotate's lead is widest, a pack that reports on another machine.

    python -m pytest -q tests/test_experiments_capacity.py
"""

import importlib.util
import json

import pytest

import memorize_uuid
from experiments import capacity

TOY = ["--preset", "toy", "--device", "cpu"]


def run(accuracies, exact=0.0, params=100):
    return {"curve": [{"step": i, "char_acc": a, "exact_match": exact} for i, a in enumerate(accuracies)],
            "trainable_params": params}


def test_a_run_stops_improving_when_memorized_or_flat_over_its_last_quarter_and_never_at_the_floor():
    assert capacity.stopped(run([0.2, 0.5, 0.9, 0.995]), 0.2, 0.02) == "memorized"
    assert capacity.stopped(run([0.2, 0.5, 0.6, 0.7, 0.8, 0.80, 0.81, 0.805]), 0.2, 0.02) == "plateau"
    assert capacity.stopped(run([0.2, 0.5, 0.6, 0.7, 0.8, 0.80, 0.81, 0.84]), 0.2, 0.02) == "still improving"
    assert capacity.stopped(run([0.2, 0.21, 0.2, 0.2, 0.21, 0.2, 0.2, 0.2]), 0.2, 0.02) == "at the floor"  # flat, low


def test_stored_bits_by_hand():
    """64 pairs x 122 bits over 1,000 parameters offer 7.808 bits a parameter; half the pairs exact stores 3.904; 60%
    of the characters with a floor of 20% is half of the way above it: 3.904 too."""
    exact, characters = capacity.stored_bits(run([0.6], exact=0.5, params=1000), 64, 0.2)
    assert exact == pytest.approx(3.904) and characters == pytest.approx(3.904)
    assert capacity.stored_bits(run([0.1], params=1000), 64, 0.2) == (0.0, 0.0)  # below the floor: nothing stored


def test_the_toy_study_in_parts_that_resume_then_its_tables_and_a_pack_that_travels(workdir, monkeypatch, tmp_path):
    first = capacity.main(TOY + ["--minutes", "0.001", "--steps_per_s", "1"])  # a part of one run: it stops
    assert first["stage"] == "tuning" and first["done"] < first["of"]
    results = capacity.main(TOY)  # the next part goes on, to the end
    reported = results["rows"]["reported"]
    assert set(reported) == {(p, label) for p in (4, 8) for label in capacity.METHODS}
    for (pairs, label), row in reported.items():
        assert [r["seed"] for r in row["runs"]] == [1, 2, 3]
        assert all(r["curve"][-1]["step"] == max(1, 2 * pairs // 32) for r in row["runs"])  # 2 epochs of batch 32
        assert (row["runs"][0]["lr"], row["runs"][0]["alpha"]) == (results["picks"][pairs, label][0],
                                                                   None if label != "lora" else
                                                                   results["picks"][pairs, label][1] * 2)
    assert set(results["rows"]["ladder"]) == {(results["ladder_point"], label) for label in capacity.LADDER}
    lead = {p: sum(a["curve"][-1]["char_acc"] - b["curve"][-1]["char_acc"] for a, b in
                   zip(reported[p, "mora rotate"]["runs"], reported[p, "lora"]["runs"])) for p in (4, 8)}
    assert results["ladder_point"] == max(lead, key=lead.get)  # where rotate's lead is widest
    tuning = [line for line in results["tables"] if " pairs, lora: final accuracy" in line]
    assert len(tuning) == 2 and all("alpha 32r" in line and "alpha 128r" in line for line in tuning)  # one per point
    saved = json.load(open(workdir / "out" / "uuid" / "capacity-toy" / "capacity.json"))
    assert saved["tables"] == results["tables"]
    if importlib.util.find_spec("matplotlib"):
        assert (workdir / "out" / "uuid" / "capacity-toy" / "capacity.png").stat().st_size > 0

    monkeypatch.setattr(memorize_uuid, "finetune", lambda *a, **k: pytest.fail("a finished run was run again"))
    assert capacity.main(TOY)["tables"] == results["tables"]  # every run from the cache
    probe = capacity.main(TOY + ["--labels", "lora,mora share", "--tune_only"])["tables"]  # a probe of two grids
    assert probe == [line for line in results["tables"] if ", lora: final" in line or ", mora share: final" in line]
    capacity.main(TOY + ["--pack", str(tmp_path / "toy.tar.gz")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another machine: nothing but the pack
    capacity.main(["--unpack", str(tmp_path / "toy.tar.gz")])
    assert capacity.main(TOY)["tables"] == results["tables"]  # read there from the pack, nothing trained


@pytest.mark.parametrize("flags,message", [(["--pairs", "64"], "--pairs 64: this study sets it (--points)"),
                                           (["--alpha_r", "32"], "this study sets it (--alphas)"),
                                           (["--seeds", "0,1"], "share a seed"),
                                           (["--labels", "lora,dora"], "--labels lora,dora: choose from lora, "),
                                           (["--labels", "lora"], "keep both, or add --no-ladder")])
def test_flags_this_study_sets_itself_are_refused(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        capacity.main(TOY + flags)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_study_that_stops_at_the_curve_gives_every_run_its_minimum_of_steps(workdir):
    """Two epochs of 4 or 8 pairs in batches of 32 are 0 steps, so --min_steps 3 sets every run's length; no LoRA to
    pair against and no ladder (it needs rotate's lead over LoRA): the curve's table, its tuning, nothing else."""
    results = capacity.main(TOY + ["--labels", "mora share", "--no-ladder", "--min_steps", "3"])
    assert set(results["rows"]["reported"]) == {(4, "mora share"), (8, "mora share")}
    assert all(r["curve"][-1]["step"] == 3 for row in results["rows"]["reported"].values() for r in row["runs"])
    assert results["rows"]["ladder"] == {} and results["ladder_point"] is None
    assert "steps a run: 4 pairs 3, 8 pairs 3" in results["tables"][0]
    assert not any("ladder" in line or " - lora |" in line for line in results["tables"])


def test_unpacking_a_file_that_is_not_there_is_one_line(workdir):
    with pytest.raises(capacity.train.UserError, match="--unpack missing.tar.gz: no such file"):
        capacity.main(["--unpack", "missing.tar.gz"])


def test_error_bars_reach_min_and_max_and_are_never_negative():
    """The mean of three 0.1s is 0.1 + 1.4e-17: a bar up to the max would be negative, which matplotlib 3.11 refuses."""
    bars = capacity.min_max_bars([[1.0, 2.0, 3.0], [0.1, 0.1, 0.1]])
    assert bars == [[1.0, pytest.approx(0.0, abs=1e-15)], [1.0, 0.0]]
    assert all(bar >= 0 for side in capacity.min_max_bars([[0.1, 0.1, 0.1], [0.7] * 3, [1 / 3] * 5]) for bar in side)
