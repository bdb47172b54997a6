"""experiments/gpu_check.py: the GPU path's code (compiled train.py steps through a ReMoRA restart, the offline UUID
preset with its own pretrained base, the compiled GPT-2 step bench) at toy sizes on the CPU.

    python -m pytest -q tests/test_experiments_gpu_check.py
"""

import json

from experiments import gpu_check, memorize


def test_every_part_of_the_gpu_check_runs_at_toy_size(workdir):
    bases = dict(memorize.BASES)
    summary = gpu_check.main(["--toy", "--device", "cpu"])
    assert all(part["passed"] for part in summary.values()), {k: v.get("error") for k, v in summary.items()}
    assert len(summary) == 3 and memorize.BASES == bases  # the toy base does not leak into later runs
    remora = summary["train.py --compile, remora"]["result"]
    assert remora["final_val_loss"] > 0 and remora["diverged_at"] is None
    assert [row["kind"] for row in summary["bench --preset gpu --gpt2"]["result"]][1:] == ["lora", "share", "rotate"]
    saved = json.load(open(workdir / "out" / "gpu_check" / "summary.json"))
    assert set(saved) == set(summary)
