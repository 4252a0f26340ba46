"""Smoke-runs the benchmark (`benchmarks.bench`) on tiny sizes: every row kind is produced,
ratios are relative to the first gated_rnn variant, the FLOP model is the one documented, the
table renders, bad flags fail with a message. Timings themselves are not checked (shared CPU).
"""

import json

import pytest

from benchmarks import bench


def test_flop_model():
    # forward: 2 B T G H (I + H); training: 2 B T G H (2I + 3H)
    assert bench.flops("fwd", "lstm", 2, 3, 5, 7) == 2 * 2 * 5 * 4 * 3 * (7 + 3)
    assert bench.flops("train", "gru", 2, 3, 5) == 2 * 2 * 5 * 3 * 3 * (2 * 3 + 3 * 3)


# Slow: every benchmark row against Flax and PyTorch (the FLOP count above stays in the
# default run).
@pytest.mark.slow
def test_tiny_run_produces_every_row(tmp_path):
    results = bench.run(configs=[(2, 8, 6)], cells=["gru"], variants=["remat", "dp"],
                        peers=["flax"], repeats=1, memory_config=(2, 8, 6), long_steps=12,
                        seeds=2, side=(2, 8, 6), ceiling_n=128,
                        memory_variants=["remat"])
    speed = results["speed"]
    assert [r["impl"] for r in speed] == ["gated_rnn[remat]", "gated_rnn[dp]", "flax", "flax[dp]"]
    assert speed[0]["fwd_ratio"] == 1.0 and speed[0]["train_ratio"] == 1.0
    for r in speed:
        assert r["fwd_s"] > 0 and r["train_s"] > 0 and len(r["train_all_s"]) == 1
        assert r["train_ratio"] == pytest.approx(r["train_s"] / speed[0]["train_s"])
        assert r["fwd_gflops"] == pytest.approx(
            bench.flops("fwd", "gru", 2, 8, 6) / r["fwd_s"] / 1e9)
    assert set(results["ceiling_gflops"]) >= {"xla"}
    assert [r["impl"] for r in results["memory"]] == ["gated_rnn[remat]", "flax"]
    assert all(r["peak_bytes"] > 0 for r in results["memory"])
    assert [r["impl"] for r in results["long"]] == ["gated_rnn[remat]", "flax"]
    seeds = results["seeds"][0]
    assert seeds["seeds"] == 2 and seeds["speedup"] > 0 and seeds["sharded_speedup"] > 0
    assert seeds["sharded_devices"] == 1  # this process has one CPU device
    table = bench.format_table(results)
    assert "gated_rnn[remat]" in table and "| gru | 2,8,6 |" in table
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))  # JSON-serializable, as main() writes it
    assert json.loads(path.read_text())["speed"][2]["impl"] == "flax"


def test_bad_options_fail_with_a_message():
    with pytest.raises(ValueError, match="--variants: unknown \\['fastest'\\]"):
        bench.run([(2, 8, 6)], ["lstm"], ["fastest"], [], 1, None, 0, 0)
    with pytest.raises(ValueError, match="--cells"):
        bench.run([(2, 8, 6)], ["rnn"], ["auto"], [], 1, None, 0, 0)
    with pytest.raises(ValueError, match="B,H,T triples"):
        bench._parse_configs(["32", "128"])
