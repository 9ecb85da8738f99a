"""Markdown report comparing runs (fp / some-fp / binary): accuracy, parameters, OPs, training time.

OPs follow SPEC §5 (``OPs = BOPs/64 + FLOPs``) through ``bhvit.profile.profile_model`` when the
profile module is available; otherwise the column says "n/a".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bhvit.checkpoint import atomic_write
from bhvit.models.bhvit import PRECISIONS
from bhvit.train.logs import read_jsonl
from bhvit.train.plots import _pyplot, save_png

LABELS = {p: "fp (teacher)" if p == "fp" else f"{p.replace('_', '-')} student" for p in PRECISIONS}


def model_profile(checkpoint: str) -> dict[str, Any]:
    """Params (total / binary) and OPs of a checkpoint's model, or {} if profiling is unavailable."""
    from bhvit.checkpoint import load_model

    model, _ = load_model(checkpoint)
    try:
        from bhvit.profile import OPS_RULE, profile_model
    except ImportError:
        return {"params": sum(p.numel() for p in model.parameters())}
    prof = profile_model(model.eval())
    return {
        "params": prof.params_total,
        "params_binary": prof.params_binary,
        "bops": prof.bops,
        "flops": prof.flops,
        "ops": prof.ops,
        "rule": OPS_RULE,
        "size_1bit_bytes": prof.size_1bit_bytes,
    }


def _epochs(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    return [r for r in read_jsonl(log) if r["kind"] == "epoch"] if log.is_file() else []


def _steps(run_dir: Path) -> list[dict]:
    log = run_dir / "log.jsonl"
    return [r for r in read_jsonl(log) if r["kind"] == "step"] if log.is_file() else []


def comparison_plots(out: Path, runs: dict[str, Path], profiles: dict[str, dict]) -> list[str]:
    """accuracy.png (test top-1 per epoch), comparison.png (top-1 and OPs), flips.png (students)."""
    plt = _pyplot()
    if plt is None:
        return []
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for prec, d in runs.items():
        ep = _epochs(d)
        ax.plot([r["epoch"] for r in ep], [r["test_acc1"] for r in ep], marker="o", label=LABELS.get(prec, prec))
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="Test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "accuracy.png")
    plt.close(fig)
    names.append("accuracy.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    precs = list(runs)
    acc = [(_epochs(runs[p]) or [{"test_acc1": 0}])[-1]["test_acc1"] for p in precs]
    a1.bar(precs, acc, color=["#888", "#48c", "#c64"][: len(precs)])
    a1.set(ylabel="test top-1 (%)", ylim=(max(0, min(acc) - 10), 100), title="Accuracy")
    for i, v in enumerate(acc):
        a1.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ops = [profiles[p].get("ops", 0) / 1e6 for p in precs]
    a2.bar(precs, ops, color=["#888", "#48c", "#c64"][: len(precs)])
    a2.set(ylabel="MOPs per image", title="OPs = BOPs/64 + FLOPs")
    fig.tight_layout()
    save_png(fig, out / "comparison.png")
    plt.close(fig)
    names.append("comparison.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for prec, d in runs.items():
        pts = [(r["step"], r["flip_ratio"]) for r in _steps(d) if "flip_ratio" in r]
        if pts:
            ax.plot(*zip(*pts), label=LABELS.get(prec, prec))
            drawn = True
    if drawn:
        ax.set(xlabel="step", ylabel="fraction of binary weights flipped per step", title="Weight flip ratio")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_png(fig, out / "flips.png")
        names.append("flips.png")
    plt.close(fig)
    return names


def deployed_section(d: dict[str, Any]) -> list[str]:
    """The report's lines on the packed binary student (:func:`bhvit.train.demo.deploy`)."""
    mib = 2**20
    same = d["top1_differs"] == 0
    agree = (
        f"the same top-1 as the float model on all {d['n']:,} images (top-1 equal)"
        if same
        else f"top-1 agreement with the float model {d['top1_agreement']:.2f} % ({d['top1_differs']} of "
        f"{d['n']:,} images differ; float model {d['float_acc1']:.2f} %)"
    )
    lines = [
        "",
        "## The deployed model",
        "",
        f"The binary student packed to `{d['packed']}` (docs/packed-format.md) and run by the native runtime "
        "(`libbhvit_runtime`, no torch):",
        "",
        f"- size: **{d['packed_bytes'] / mib:.2f} MiB** against {d['fp32_checkpoint_bytes'] / mib:.2f} MiB for its "
        f"fp32 checkpoint ({d['ratio']:.1f}× smaller; 1-bit weights {d['binary_weight_bytes'] / mib:.2f} MiB, "
        f"float parts {d['float_bytes'] / mib:.2f} MiB);",
        f"- top-1 on the whole test set ({d['n']:,} images) through the runtime: **{d['acc1']:.2f} %** "
        f"(top-5 {d['acc5']:.2f} %), {agree};",
        f"- batch-1 latency, best of 3 interleaved rounds ({d['machine']}):",
        "",
        "| threads | runtime (ms) | binary student, PyTorch fp32 (ms) | fp teacher, PyTorch fp32 (ms) | "
        "speed-up vs student | vs teacher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["latency"]:
        threads = f"{r['threads']}{' (default)' if r['default_threads'] else ''}"
        lines.append(
            f"| {threads} | {r['packed_ms']:.3f} | {r['student_fp32_ms']:.3f} | {r['teacher_fp32_ms']:.3f} | "
            f"{r['speedup_vs_student_fp32']:.1f}× | {r['speedup_vs_teacher_fp32']:.1f}× |"
        )
    return lines


def write_report(
    out: Path,
    summaries: dict[str, dict],
    preset: str,
    wall_s: float,
    init: dict | None = None,
    deployed: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/report.md`` (+ PNGs) from the runs' summaries (and the students' fp init run and the
    packed binary student, if any); returns its path."""
    out = Path(out)
    runs = {p: Path(s["checkpoint"]).parent for p, s in summaries.items()}
    profiles = {p: model_profile(s["checkpoint"]) for p, s in summaries.items()}
    plots = comparison_plots(out, runs, profiles)
    first = next(iter(summaries.values()))
    lines = [
        f"# BHViT demo report ({preset})",
        "",
        f"Dataset: {first['dataset']} (test set: {first['test_images']} images), image size "
        f"{first['img_size']} px, window {first['window_size']}, arch `{first['arch']}`. "
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}; total wall time {wall_s / 60:.1f} min.",
        "",
        "| model | top-1 (%) | top-5 (%) | epochs | params | binary params | MOPs / image | train time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for prec, s in summaries.items():
        pr = profiles[prec]
        ops = f"{pr['ops'] / 1e6:.2f}" if "ops" in pr else "n/a"
        lines.append(
            f"| {LABELS.get(prec, prec)} | {s['test_acc1']:.2f} | {s['test_acc5']:.2f} | {s['epochs']} | "
            f"{pr['params']:,} | {pr.get('params_binary', 0):,} | {ops} | {s['train_time_s']:.0f} |"
        )
    if init is not None:
        where = Path(init["checkpoint"]).parent
        lines += [
            "",
            f"The students start from a separate fp run of {init['epochs']} epochs "
            f"({init['test_acc1']:.2f} % top-1, {init['train_time_s']:.0f} s, `{where}/`) "
            "and distil from the teacher above.",
        ]
    if deployed is not None:
        lines += deployed_section(deployed)
    rule = next((p["rule"] for p in profiles.values() if "rule" in p), None)
    lines += ["", f"OPs rule: {rule}." if rule else "", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "Per-run logs, plots and checkpoints: " + ", ".join(f"`{p}/`" for p in runs.values()), ""]
    text = "\n".join(lines)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text))
