import json

import pytest

from bhvit.cli.train import cmd_demo
from bhvit.train.demo import PRESETS, stage_config


def test_demo_end_to_end_on_fake_fashion_mnist(fmnist_dir, tmp_path):
    out = tmp_path / "demo"
    rc = cmd_demo(
        [
            "--data",
            str(fmnist_dir),
            "--out",
            str(out),
            "--teacher-epochs",
            "1",
            "--student-epochs",
            "1",
            "--batch-size",
            "16",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    result = json.loads((out / "demo_summary.json").read_text())
    assert set(result["summaries"]) == {"fp", "some_fp", "binary"}
    for prec, s in result["summaries"].items():
        assert s["precision"] == prec and s["test_images"] == 32
    assert result["summaries"]["binary"]["teacher"] == result["summaries"]["fp"]["checkpoint"]
    binary_cfg = json.loads((out / "binary" / "config.json").read_text())  # quick: from the some-fp student
    assert binary_cfg["model"]["init_from"] == result["summaries"]["some_fp"]["checkpoint"]
    report = (out / "report.md").read_text()
    assert "binary student" in report and "| model |" in report and "MOPs" in report
    # the deployed model: packed, scored through the runtime on the whole test set, timed on this machine
    d = result["deployed"]
    assert d["packed"] == str(out / "binary.bhvp") and (out / "binary.bhvp").stat().st_size == d["packed_bytes"]
    assert d["n"] == 32 and d["acc1"] == pytest.approx(result["summaries"]["binary"]["test_acc1"])
    assert d["float_acc1"] == pytest.approx(result["summaries"]["binary"]["test_acc1"])
    assert d["top1_agreement"] == 100.0 and d["ratio"] > 1
    assert [r["threads"] for r in d["latency"]][0] == 1 and d["latency"][-1]["default_threads"]
    assert all(r["packed_ms"] > 0 and r["student_fp32_ms"] > 0 and r["teacher_fp32_ms"] > 0 for r in d["latency"])
    assert "## The deployed model" in report and f"**{d['acc1']:.2f} %**" in report and "machine: " in report
    assert f"{d['packed_bytes'] / 2**20:.2f} MiB" in report and "top-1 equal" in report
    for png in ("accuracy.png", "comparison.png", "flips.png"):
        if f"({png})" in report:
            assert (out / png).stat().st_size > 0


def test_presets_are_valid_configs():
    for preset in PRESETS.values():
        teacher = stage_config(preset, "fp", None)
        student = stage_config(preset, "binary", "t.pt")
        assert teacher.loss.mode == "ce" and student.loss.mode == "paper"
        assert student.model.init_from == "t.pt" and student.loss.kd_weight == pytest.approx(0.8)


def test_demo_with_a_separate_student_init(fmnist_dir, tmp_path):
    out = tmp_path / "demo"
    rc = cmd_demo(
        [
            "--data",
            str(fmnist_dir),
            "--out",
            str(out),
            "--init-epochs",
            "1",
            "--teacher-epochs",
            "1",
            "--student-epochs",
            "1",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--only-binary",
        ]
    )
    assert rc == 0
    result = json.loads((out / "demo_summary.json").read_text())
    init, teacher = result["init"], result["summaries"]["fp"]
    assert init["precision"] == "fp" and init["checkpoint"] != teacher["checkpoint"]
    student_cfg = json.loads((out / "binary" / "config.json").read_text())
    assert student_cfg["model"]["init_from"] == init["checkpoint"]
    assert student_cfg["loss"]["teacher"] == teacher["checkpoint"]
    assert "separate fp run of 1 epochs" in (out / "report.md").read_text()


def test_long_preset_stages():
    long = PRESETS["long"]
    init = stage_config(long, "fp", None, stage="fp_init")
    teacher = stage_config(long, "fp", None)
    student = stage_config(long, "binary", "t.pt", "i.pt")
    assert (init.run.epochs, init.data.augment, init.model.init_from) == (1, "none", None)
    assert (teacher.run.epochs, teacher.data.augment) == (20, "small")
    assert (student.run.epochs, student.data.augment, student.model.init_from, student.loss.teacher) == (
        10,
        "none",
        "i.pt",
        "t.pt",
    )
    assert init.run.out_dir != teacher.run.out_dir


def test_demo_on_an_image_folder(tmp_path, image_folder):
    """``bhvit demo --data DIR`` on any folder (here 24-px RGB, 2 classes)."""
    data, out = image_folder(tmp_path / "imgs", side=24), tmp_path / "demo"
    rc = cmd_demo(["--data", str(data), "--out", str(out), "--batch-size", "4", "--threads", "1", "--only-binary"])
    assert rc == 0
    result = json.loads((out / "demo_summary.json").read_text())
    assert set(result["summaries"]) == {"fp", "binary"}
    assert all(s["test_images"] == 6 and s["dataset"] == str(data) for s in result["summaries"].values())
