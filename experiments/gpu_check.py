"""
The whole GPU path in one command, with nothing to download (a GPU lent to this project reaches no hub):

    python -m experiments.gpu_check                       # one CUDA GPU: 5 minutes on an H200 (passed, 2026-11-30)
    python -m experiments.gpu_check --toy --device cpu    # the same code path at toy sizes (a test runs it)

1. train.py --compile in bf16 autocast: ReMoRA (MoRA's code, and a restart: a merge, new permutations, a recompile).
2. experiments/memorize.py --preset gpu-offline: train.py pretrains a base on the bundled corpus, then full, LoRA and
   MoRA fine-tuning on 1,000 UUID pairs with a compiled training step (its estimate is printed first).
3. experiments/bench.py --preset gpu --gpt2: the GPT-2-small fine-tuning step, bf16, compiled, with operation counts
   (LoRA, share and rotate: each compile of a 12-block model takes about a minute).
Every part runs even if one before it fails; out/gpu_check/summary.json says which passed, with their results.
"""

import argparse
import json
import os
import time
import traceback

import train
from experiments import bench, memorize
from experiments.harness import write_json

TOY_MODEL = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "80", "--batch_size", "2",
             "--eval_iters", "1", "--eval_interval", "2", "--log_interval", "1"]


def parts(toy: bool, device: str) -> dict:
    """name -> a function that runs that part and returns what it measured. At toy sizes only train.py compiles
    (the other two compile the same way, one torch.compile call each, and compiling costs the CPU most of the time)."""
    out = os.path.join("out", "gpu_check")
    steps = ["--max_iters", "4", "--merge_every", "2"] if toy else ["--max_iters", "40", "--merge_every", "20"]
    model = TOY_MODEL + steps if toy else steps
    uuid = ["--pairs", "4", "--steps", "2", "--eval_every", "1", "--batch_size", "2", "--no-compile"] if toy else []
    gpt2 = {"gpt2_batch": (2, 16), "repeats": 1, "warmup": 1, "compile": False} if toy else {}
    return {
        "train.py --compile, remora": lambda: train.main(
            model + ["--method", "remora", "--compile", "--device", device, "--out_dir", os.path.join(out, "remora")]),
        "memorize --preset gpu-offline": lambda: {
            k: v for k, v in memorize.main(["--preset", "gpu-offline", "--device", device, "--tag", "gpu-check"]
                                           + uuid).items() if k in ("tables", "estimated_flops", "estimated_launches")},
        "bench --preset gpu --gpt2": lambda: bench.gpt2_step_bench(
            dict(bench.PRESETS["gpu"], **gpt2), bench.setup_device(device)[0], kinds=("lora", "share", "rotate"),
            **({"n_layer": 1, "d": 64, "vocab": 100} if toy else {})),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False)
    parser.add_argument("--device", default="cuda", help="cuda (the point), or cpu with --toy")
    parser.add_argument("--toy", action="store_true", help="toy sizes: the code path in seconds, on any device")
    args = parser.parse_args(argv)
    bases = dict(memorize.BASES)
    if args.toy:  # a toy base, pretrained in two steps
        memorize.BASES["gpu-offline"] = TOY_MODEL + ["--max_iters", "2"]
    summary = {}
    for name, run in parts(args.toy, args.device).items():
        print(f"\n=== {name}", flush=True)
        t0 = time.time()
        try:
            summary[name] = {"passed": True, "result": run()}
        except Exception:  # a check reports every part: one failure must not hide the others
            summary[name] = {"passed": False, "error": traceback.format_exc()}
            print(summary[name]["error"], flush=True)
        summary[name]["seconds"] = time.time() - t0
    memorize.BASES.update(bases)
    write_json(os.path.join("out", "gpu_check", "summary.json"), summary)
    print("\n" + "\n".join(f"{'PASS' if s['passed'] else 'FAIL'} {name} ({s['seconds']:.0f} s)"
                           for name, s in summary.items()))
    print(json.dumps({name: s["passed"] for name, s in summary.items()}))
    return summary


if __name__ == "__main__":
    main()
