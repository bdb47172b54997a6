"""
The GPU path as people run it, in one unattended command with nothing to download; its output is one file.

    python -m experiments.gpu_check                       # one CUDA GPU: about 5 minutes on an H200 (not run yet)
    python -m experiments.gpu_check --parts throughput,capacity    # issue 28's: about 11 minutes (not run yet)
    python -m experiments.gpu_check --parts pretraining            # issue 31's: about 9 minutes (not run yet)
    python -m experiments.gpu_check --toy --device cpu --parts tests,bench,throughput,capacity,pretraining   # a test

1. python -m pytest -q --gpu: a bf16 step against float32 for every adapter and full training, merge and
   remove_adapters, generation with the cache, a ReMoRA restart, --compile, torchrun with one process (nccl).
2. bench --preset gpu --gpt2: the fine-tuning step at GPT-2-small's shapes, batch 16 x 512, bf16 autocast, eager
   and compiled (this project's GPT: full, LoRA, share, rotate) and eager on HuggingFace's GPT-2 (PEFT's LoRA when peft
   is importable, this project's LoRA, share and rotate): ms, the ratio to LoRA, the arithmetic floor, peak memory.
3. (--parts throughput) experiments.many: one UUID run alone, then 4 processes of 32 batched runs: steps/s.
4. (--parts capacity) one 8-minute part of python -m experiments.capacity --preset gpu (base included), then its
   pack, out/gpu_check/capacity-gpu.tar.gz: carried back and unpacked, the study goes on there or on the next GPU.
5. (--parts pretraining) one 8-minute part of python -m experiments.pretraining --preset stdlib-gpu (the comparison
   on the standard library's code, 6 x 512), then its pack, out/gpu_check/stdlib-gpu.tar.gz (the runs' records).
Every part runs even if one before it fails; out/gpu_check/summary.json says which passed, with what each measured.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

from experiments import bench, capacity, many, pretraining
from experiments.harness import write_json

KINDS = ("lora", "share", "rotate")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def parts(toy: bool, device: str) -> dict:
    """name -> a function that runs that part and returns what it measured. At toy sizes the GPU tests run one test
    (the rest of them run in the suite, on the CPU, under GPU_TESTS_DEVICE=cpu) and the bench one block, uncompiled."""
    env = {**os.environ, **({"GPU_TESTS_DEVICE": "cpu"} if device == "cpu" else {})}
    tests = [sys.executable, "-m", "pytest", "-q", "--gpu", "-p", "no:cacheprovider"] + (["-k", "generation"]
                                                                                        if toy else [])

    def gpu_tests():
        result = subprocess.run(tests, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode:
            raise RuntimeError(result.stdout[-4000:] + result.stderr[-2000:])
        return result.stdout.strip().splitlines()[-1]  # "16 passed in 150.2s"

    gpt2 = {"gpt2_batch": (2, 16), "repeats": 1, "warmup": 1, "compile": False} if toy else {}
    sizes = {"n_layer": 1, "d": 64, "vocab": 100} if toy else {}
    runs = ["--steps", "3", "--pairs", "4", "--workers", "2", "--runs", "2"] if toy else [
        "--steps", "1000", "--workers", "4", "--runs", "32"]
    preset = "toy" if toy else "gpu"  # toy: a part of one run (the study has its own tests)
    study = ["--preset", preset, "--device", device] + (["--minutes", "0.001", "--steps_per_s", "1"] if toy else
                                                        ["--minutes", "8"])

    def study_part():  # one part of the study, then its pack: carried back, the study goes on there
        result = capacity.main(study)
        capacity.main(study + ["--pack", os.path.join("out", "gpu_check", f"capacity-{preset}.tar.gz")])
        return {key: result[key] for key in ("stage", "done", "of", "ladder_point") if key in result}

    comparison = ["--preset", "stdlib-toy", "--methods", "lora,mora", "--tune_seeds", "0", "--seeds", "1,2",
                  "--minutes", "0.001"] if toy else ["--preset", "stdlib-gpu", "--minutes", "8"]

    def comparison_part():  # one part of the comparison, then its pack: the runs' records travel
        result = pretraining.main(comparison)
        pretraining.main(comparison + ["--pack", os.path.join("out", "gpu_check", f"{comparison[1]}.tar.gz")])
        return {key: result[key] for key in ("stage", "done", "of", "tables") if key in result}

    return {"tests": ("pytest --gpu", gpu_tests),
            "bench": ("bench --preset gpu --gpt2", lambda: bench.gpt2_step_bench(
                dict(bench.PRESETS["gpu"], **gpt2), bench.setup_device(device)[0], kinds=KINDS, **sizes)),
            "throughput": ("experiments.many", lambda: many.main(runs + ["--device", device])),
            "capacity": ("experiments.capacity, one part", study_part),
            "pretraining": ("experiments.pretraining --preset stdlib-gpu, one part", comparison_part)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu with --toy")
    parser.add_argument("--toy", action="store_true", help="toy sizes: the code path in seconds, on any device")
    parser.add_argument("--parts", default="tests,bench",
                        help="comma-separated: tests, bench (issue 30's five minutes), throughput, capacity (28's), "
                             "pretraining (31's)")
    args = parser.parse_args(argv)
    every = parts(args.toy, args.device)
    if not set(args.parts.split(",")) <= set(every):
        parser.error(f"--parts {args.parts}: choose among {', '.join(every)}")
    summary = {}
    for name, run in (every[part] for part in args.parts.split(",")):
        print(f"\n=== {name}", flush=True)
        t0 = time.time()
        try:
            summary[name] = {"passed": True, "result": run()}
        except Exception:  # a check reports every part: one failure must not hide the others
            summary[name] = {"passed": False, "error": traceback.format_exc()}
            print(summary[name]["error"], flush=True)
        summary[name]["seconds"] = time.time() - t0
        if name.startswith("bench") and summary[name]["passed"]:
            bench.print_gpt2(summary[name]["result"])
    write_json(os.path.join("out", "gpu_check", "summary.json"), summary)
    print("\n" + "\n".join(f"{'PASS' if s['passed'] else 'FAIL'} {name} ({s['seconds']:.0f} s)"
                           for name, s in summary.items()))
    print(json.dumps({name: s["passed"] for name, s in summary.items()}))
    return summary


if __name__ == "__main__":
    main()
