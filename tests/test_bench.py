"""bench.py runs and reports every figure it promises (tiny sizes; no timing is asserted).

    python -m pytest -q tests/test_bench.py
"""

import torch

import bench

TINY = {"tokens": (64, 16), "repeats": 1, "warmup": 0, "model_batch": 2, "dtype": "float32"}


def test_saved_for_backward_counts_distinct_tensors():
    x = torch.randn(256, 64, requires_grad=True)  # 64 KiB
    w = torch.randn(64, 64, requires_grad=True)  # 16 KiB
    assert bench.saved_for_backward_mb(lambda: (x @ w).sum()) == (256 * 64 + 64 * 64) * 4 / 2**20


def test_layer_and_model_bench_report_every_figure(capsys):
    layers = bench.layer_bench([(32, 64)], [2, 256], TINY, torch.device("cpu"))
    assert [(row["r"], row["route"]) for row in layers] == [(2, "dense"), (2, "operators"), (256, "dense"),
                                                            (256, "operators")]
    dense = layers[0]
    for kind in ["lora", "truncate", "share", "decouple", "rotate"]:
        for key in ("ms", "saved_mb", "delta_ms", "merge_ms", "merge_bf16_ms", "merged_inference_ms",
                    "plain_inference_ms"):
            assert dense[f"{kind}_{key}"] > 0, (kind, key)
    assert dense["copy_floor_ms"] > 0 and dense["alloc_floor_ms"] > 0
    assert "lora_ms" not in layers[2]  # r=256 does not fit a 32 x 64 layer
    models = bench.model_bench(TINY, torch.device("cpu"))
    assert [row["method"] for row in models] == ["full", "lora", "mora"]
    assert models[0]["trainable_params"] > models[1]["trainable_params"] > 0
    bench.print_tables(layers, models)
    out = capsys.readouterr().out
    assert "| 32x64 | 2 | 64 | operators |" in out and "| mora | float32 |" in out
