"""``bhvit bench`` end to end on the small test variant: every method timed, JSON written, no files left."""

import json

import pytest

import bhvit.runtime as rt
from bhvit.cli.engine import cmd_bench


def test_bench_writes_every_method(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        cmd_bench(
            [
                "--models",
                "bhvit_test",
                "--batch",
                "2",
                "--threads",
                "1",
                "--rounds",
                "1",
                "--profile",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert row["model"] == "bhvit_test" and row["batch"] == 2 and row["top1_agree"] is True
    for key in ("fp32_sim_ms", "packed_ms", "int8_dynamic_ms", "ideal_binary_ms", "kernel_peak_gbops"):
        assert row[key] > 0
    assert 0 < row["ideal_share"] < 1  # the forward takes longer than its binary GEMMs at the peak rate
    pytest.importorskip("onnxruntime")
    assert row["onnxruntime_fp32_ms"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # the temporary ONNX file is gone
    text = capsys.readouterr().out
    assert "packed runtime, time per op kind" in text and "of the forward" in text


def test_bench_forces_a_code_path(tmp_path):
    out, previous = tmp_path / "bench.json", rt.isa()
    try:
        assert (
            cmd_bench(
                [
                    "--models",
                    "bhvit_test",
                    "--batch",
                    "1",
                    "--threads",
                    "1",
                    "--rounds",
                    "1",
                    "--no-onnx",
                    "--isa",
                    "generic",
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        assert rt.isa() == "generic"  # the runtime's one setting
    finally:
        rt.set_isa(previous)
    assert json.loads(out.read_text())["machine"]["engine_isa"] == "generic"
