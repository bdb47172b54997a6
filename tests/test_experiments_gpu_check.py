"""experiments/gpu_check.py: the GPU path's one command (the GPU tests, the GPT-2-small step bench with its eager,
compiled and peer rows; issue 28's throughput and a part of the capacity study with its pack) at toy sizes on the CPU.

    python -m pytest -q tests/test_experiments_gpu_check.py
"""

import importlib.util
import json
import tarfile

from experiments import bench, gpu_check


def test_every_part_of_the_gpu_check_runs_at_toy_size(workdir):
    summary = gpu_check.main(["--toy", "--device", "cpu", "--parts", "tests,bench,throughput,capacity,pretraining"])
    assert all(part["passed"] for part in summary.values()), {k: v.get("error") for k, v in summary.items()}
    assert list(summary) == ["pytest --gpu", "bench --preset gpu --gpt2", "experiments.many",
                             "experiments.capacity, one part", "experiments.pretraining --preset stdlib-gpu, one part"]
    assert summary["experiments.many"]["result"][-1].startswith("| 2 process(es) x 2 run(s) batched")
    assert summary["experiments.capacity, one part"]["result"]["done"] == 1  # a part of one run, then its pack
    assert (workdir / "out" / "gpu_check" / "capacity-toy.tar.gz").stat().st_size > 0
    assert summary["experiments.pretraining --preset stdlib-gpu, one part"]["result"] == {"stage": "tuning", "done": 1,
                                                                                        "of": 4}
    with tarfile.open(workdir / "out" / "gpu_check" / "stdlib-toy.tar.gz") as pack:  # the finished run's records
        assert sorted(pack.getnames()) == [f"out/compare/stdlib-toy/lora-alpha1-lr0.01-seed0/{name}"
                                           for name in ("code.json", "metrics.jsonl")]
    assert summary["pytest --gpu"]["result"].startswith("1 passed")  # toy: the generation test, on the CPU
    rows = summary["bench --preset gpu --gpt2"]["result"]
    assert [row["kind"] for row in rows if row["model"] == bench.OURS] == ["frozen layer", "full", "lora", "share",
                                                                          "rotate"]
    peers = {row["kind"] for row in rows if row["model"] == bench.HF}  # optional: with transformers (and peft)
    assert peers >= {"lora", "share", "rotate"} or (peers == set() and importlib.util.find_spec("transformers") is None)
    saved = json.load(open(workdir / "out" / "gpu_check" / "summary.json"))
    assert set(saved) == set(summary)
