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
        for key in ("ms", "saved_mb", "delta_ms", "merge_ms", "merge_bf16_ms"):
            assert dense[f"{kind}_{key}"] > 0, (kind, key)
    assert dense["copy_floor_ms"] > 0 and dense["alloc_floor_ms"] > 0 and dense["copy_floor_bf16_ms"] > 0
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


def test_dispatch_count_counts_operations_not_views():
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    assert bench.dispatched(lambda: (a @ b).sum()) == 2  # mm, sum
    assert bench.dispatched(lambda: a.t().unsqueeze(0)) == 0  # views only
    assert bench.dispatched(lambda: a.t().contiguous()) == 1  # the copy


def test_gpt2_floor_by_hand():
    """Per token and block, adapters forward + backward (3x forward): LoRA r=8 on 4 x (768x768) + 768x3072 + 3072x768
    is 3 * 8 * (4 * 1536 + 2 * 3840) = 331,776; MoRA rotate (r^ 110, 174, 174 over 7, 5 and 18 blocks) is
    3 * (4 * 7 * 110^2 + 5 * 174^2 + 18 * 174^2) = 3,105,444; sharing (r^ 111, 175, 175, one block) 331,602.
    HuggingFace's GPT-2 fuses query, key and value into one 768 -> 2304 layer: LoRA there is 3 * 8 * (3072 + 1536 +
    3840 + 3840) = 294,912. Full fine-tuning trains every projection (a third pass each, 3 * 7,077,888 in all, as
    ours has 4 x 768^2 + 2 x 768 x 3072 weights) and the head tied to the embedding (a third pass, 50257 x 768)."""
    lora = bench.gpt2_macs("lora", 8, 128)
    assert bench.gpt2_macs("rotate", 8, 128) - lora == 12 * (3_105_444 - 331_776)
    assert bench.gpt2_macs("share", 8, 128) - lora == 12 * (331_602 - 331_776)
    assert 1.12 < bench.gpt2_macs("rotate", 8, 128) / lora < 1.14  # the floor: MoRA rotate pays 13% more arithmetic
    assert bench.gpt2_macs("lora", 8, 128, shapes=bench.HF_SHAPES) - lora == 12 * (294_912 - 331_776)
    assert bench.gpt2_macs("full", 8, 128) - lora == 12 * (7_077_888 - 331_776) + 50257 * 768


def test_gpt2_step_bench_reports_every_contender(capsys):
    rows = bench.gpt2_step_bench(dict(TINY, gpt2_batch=(2, 16), compile=True), torch.device("cpu"), n_layer=1, d=64,
                                 vocab=100, kinds=("lora", "share", "rotate"))
    ours = [(row["kind"], row.get("compiled")) for row in rows if row["model"] == bench.OURS]
    assert ours == [("frozen layer", None), ("full", False), ("lora", False), ("lora", True), ("share", False),
                    ("share", True), ("rotate", False), ("rotate", True)]  # full training is timed eager only
    peers = [row["kind"] for row in rows if row["model"] == bench.HF]
    try:
        import transformers  # noqa: F401 (both peers are optional)
    except ImportError:
        assert peers == []
    else:
        assert peers[-3:] == ["lora", "share", "rotate"] and peers[:-3] in ([], ["peft lora"])
    timed_rows = [row for row in rows if "ms_per_step" in row]
    assert all(row["ms_per_step"] > 0 and row["peak_cuda_mb"] is None for row in timed_rows)  # no CUDA here
    for row in timed_rows:  # the ratio is to LoRA's step in the same model and mode (PEFT's, for the peers)
        reference = "peft lora" if row["model"] == bench.HF and "peft lora" in peers else "lora"
        lora = next(r for r in timed_rows if (r["model"], r["kind"], r["compiled"]) == (row["model"], reference,
                                                                                         row["compiled"]))
        assert row["step_over_lora"] == row["ms_per_step"] / lora["ms_per_step"]
        assert row["floor_over_lora"] == row["macs_per_token"] / lora["macs_per_token"]
    for row in [r for r in rows if r["ops_per_layer"] is not None]:  # each layer counted alone, on an input with no
        layer, x = bench.make_layer(row["kind"].replace("frozen layer", "base"), 64, 64, 8, "cpu", dense=False), \
            torch.randn(2, 16, 64, requires_grad=True)  # gradient from the layers counted before it
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert row["ops_per_layer"] == bench.dispatched(lambda: layer(x).float().sum().backward()), row["kind"]
    bench.print_gpt2(rows)
    out = capsys.readouterr().out
    assert "| this project's GPT | rotate | float32 | yes |" in out
    assert "| this project's GPT | full | float32 | no |" in out


def test_mora_dispatches_at_most_one_and_a_half_times_loras_operations():
    """Issue 16's kernel budget, counted (not timed) on one 768 x 768 layer's forward + backward under bf16 autocast,
    a fresh adapter (ReMoRA's permutations are the identity, and skipped, until its first restart)."""
    x = torch.randn(2, 16, 768, requires_grad=True)

    def ops(kind: str) -> int:
        layer, x.grad = bench.make_layer(kind, 768, 768, 8, "cpu", dense=False), None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bench.dispatched(lambda: layer(x).float().sum().backward())

    lora, mora_ops = ops("lora"), {kind: ops(kind) for kind in bench.mora.COMPRESSIONS}
    assert all(count <= 1.5 * lora for count in mora_ops.values()), (lora, mora_ops)


def test_traffic_by_hand_on_the_meta_device():
    """The frozen layer's forward, one addmm: it reads x (2 x 8 x 64 bf16: 2,048 bytes), W (64 x 64: 8,192) and the
    bias (128) and writes y (2,048): 12,416 bytes, traced on the meta device, where nothing is computed."""
    base = bench.layer_traffic("base", d=64, tokens=(2, 8))
    assert dict(base["top"])["addmm"] == 12_416 / 2**20
    rotate, lora = bench.layer_traffic("rotate", d=64, tokens=(2, 8)), bench.layer_traffic("lora", d=64, tokens=(2, 8))
    assert rotate["ops"] > lora["ops"] > base["ops"] and rotate["mb"] > base["mb"]
