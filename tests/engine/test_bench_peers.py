"""benchmarks/bench_peers.py: the runtime against the fp twin in the other runtimes, on bhvit_test at 32 px with
whatever competitors are installed; a failing competitor is reported and the others go on; a missing package
is skipped with its install command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import bhvit
from bhvit import runtime
from bhvit.engine.program import write_program_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the scripts are not a package
import bench_peers  # noqa: E402

FAST = ["--models", "bhvit_test", "--img-size", "32", "--threads", "1", "--rounds", "2", "--min-round", "0"]


def test_every_installed_competitor_is_timed_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    assert bench_peers.main([*FAST, "--batch", "2", "--calibration", "4", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["machine"]["cpu_flags"].keys() == set(bench_peers.CPU_FLAGS)
    assert record["isa"] == runtime.isa() and "median" in record["statistic"] and record["complete"]
    (row,) = record["rows"]
    assert (row["model"], row["batch"], row["threads"]) == ("bhvit_test", 2, 1)
    for name, result in row["competitors"].items():
        missing = bench_peers.missing_modules(name)
        if missing:
            assert result["skipped"] and result["error"] == f"skipped: {missing}"
            continue
        assert "error" not in result, (name, result)
        assert len(result["rounds"]) == 2 and 0 < result["ms_best"] <= result["ms"]
        assert result["ms_per_image"] == pytest.approx(result["ms"] / 2)
    comps = row["competitors"]
    assert comps["bhvit"]["info"]["isa"] == runtime.isa() and comps["bhvit"]["info"]["threads"] == 1
    assert comps["torch_fp32"]["info"]["threads"] == 1
    if "info" in comps["openvino_f32"]:
        assert comps["openvino_f32"]["info"]["inference_precision"] == "f32"
        assert comps["openvino_f32"]["info"]["threads"] == 1
    bops = bhvit.profile_model(bhvit.create_model("bhvit_test", precision="binary")).bops
    assert row["bops_per_image"] == bops
    assert row["ideal_ms"] == pytest.approx(bops * 2 / (row["kernel_peak_gbops"] * 1e9) * 1e3)
    assert row["ideal_share"] == pytest.approx(row["ideal_ms"] / comps["bhvit"]["ms"])
    peers = {k: comps[k]["ms"] for k in bench_peers.PEERS if "ms" in comps[k]}
    assert row["best_peer"] == min(peers, key=peers.__getitem__)
    assert row["speedup_vs_best_peer"] == pytest.approx(peers[row["best_peer"]] / comps["bhvit"]["ms"])


def test_a_failing_competitor_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    model = bhvit.create_model("bhvit_test", precision="binary").eval()
    good = write_program_file(model, tmp_path / "good.bhvp")
    bad = tmp_path / "bad.bhvp"
    bad.write_bytes(good.read_bytes()[:1000])  # truncated
    base = {"competitor": "bhvit", "batch": 1, "threads": 1, "img_size": 32, "in_chans": 3, "isa": None}
    specs = {
        "absent": {"error": "preparing it failed"},
        "good": {**base, "file": str(good)},
        "truncated": {**base, "file": str(bad)},
    }
    results, peak = bench_peers.measure_config(specs, 1, None, rounds=1, min_round=0.0, logs=tmp_path)
    assert len(results["good"]["rounds"]) == 1 and peak > 0
    assert results["truncated"]["error"].startswith("PackedFormatError: ")
    assert results["absent"] == {"error": "preparing it failed"}


def test_a_worker_that_dies_is_reported_with_its_last_words(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHOME": str(tmp_path / "absent")}  # the interpreter cannot start
    worker = bench_peers.Worker({"competitor": "bhvit"}, env, tmp_path / "worker.log")
    answer = worker.receive(timeout=60)
    worker.send({"round": 0.0})  # to a worker that has gone: nothing raised
    worker.close()
    assert answer["error"].startswith("the worker exited with status 1: ") and "Python" in answer["error"]


def test_a_missing_package_is_skipped_with_its_install_command(tmp_path: Path, monkeypatch) -> None:
    absent = bench_peers.Competitor("OpenVINO default", "onnx_fp", ("bhvit_no_such_module",), "pip install it")
    monkeypatch.setitem(bench_peers.COMPETITORS, "openvino", absent)
    out = tmp_path / "peers.json"
    assert bench_peers.main([*FAST, "--batch", "1", "--competitors", "bhvit", "openvino", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["competitors"]["openvino"] == {
        "error": "skipped: bhvit_no_such_module not installed: pip install it",
        "skipped": True,
    }
    assert row["competitors"]["bhvit"]["ms"] > 0 and "best_peer" not in row
