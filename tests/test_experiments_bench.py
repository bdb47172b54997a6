"""experiments/bench.py runs and reports every figure it promises (tiny sizes; no timing is asserted).

    python -m pytest -q tests/test_experiments_bench.py
"""

import torch

import train
from experiments import bench

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
    routes = [(row["method"], row["route"]) for row in models]
    assert routes == [("full", "-"), ("lora", "default"), ("mora", "default"), ("lora", "operators"),
                      ("mora", "operators")]
    assert models[0]["trainable_params"] > models[1]["trainable_params"] > 0
    bench.print_tables(layers, models)
    out = capsys.readouterr().out
    assert "| 32x64 | 2 | 64 | operators |" in out and "| mora | operators | float32 |" in out


def test_gpt2_memory_counts_only_adapters_as_trained():
    rows = {(r["model"], r["method"]): r for r in bench.gpt2_memory()}
    small = rows["gpt2", "full"]
    assert small["total_params"] == small["trainable_params"] == 124_439_808  # GPT-2 small, head tied
    assert rows["gpt2", "lora"]["trainable_params"] == 12 * 8 * (4 * (768 + 768) + 2 * (768 + 3072))
    assert abs(rows["gpt2", "mora"]["trainable_params"] / rows["gpt2", "lora"]["trainable_params"] - 1) < 0.02
    for row in rows.values():
        assert row["adam_bytes"] == 2 * row["grad_bytes"] == 8 * row["trainable_params"]


def test_an_adapter_step_gives_gradients_and_optimizer_state_to_adapters_only():
    cfg = train.parse_args(["--method", "mora", "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--rank", "2"])
    model = train.adapt(bench.GPT(bench.GPTConfig(n_layer=1, n_embd=32, n_head=2)), cfg, pretraining=False)
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99), "cpu")
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    model(idx, idx)[1].backward()
    optimizer.step()
    adapters = {name for name, _ in model.named_parameters() if name.endswith(".M")}
    assert {name for name, p in model.named_parameters() if p.grad is not None} == adapters
    assert {id(p) for p in optimizer.state} == {id(p) for name, p in model.named_parameters() if name in adapters}
