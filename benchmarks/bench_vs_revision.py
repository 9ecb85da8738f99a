"""The native runtime against the packed model of an earlier revision, and against the fp32 model, side by side.

It runs the packed model exactly as an earlier revision shipped it (its Python, its kernels, built from
``git archive REV``) in a worker process, and times it round by round, interleaved, with this tree's runtime
and the fp32 PyTorch model in the main process. All three get the same weights (the same seed) and the same
image; the report says whether their top-1 agree. Any revision works: the default, 1cb9152, is the packed
model before the runtime (its version-1 forward: binary kernels native, float parts in torch); the last
revision that still had that forward beside the runtime (``LegacyPackedModel``) measured it 1.80x slower.

    python benchmarks/bench_vs_revision.py                                  # issue 11's "today": 1cb9152
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_vs_revision.py \\
        --isa avx2 --json benchmarks/results/bench_vs_revision_avx2.json

The earlier revision is unpacked and its native code built once under ``--workdir`` (about 3 minutes on 2
cores); later runs reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The worker: the earlier revision's own `bhvit.engine.pack` on the same seeded model, timed on request.
# Protocol on stdin/stdout, one line each: "time N" -> seconds for N forwards; "logits" -> JSON list.
WORKER = r"""
import json, sys
import numpy as np, torch
import bhvit, bhvit.engine
from pathlib import Path
root, arch, precision, size, batch, threads, isa = sys.argv[1:8]
assert Path(bhvit.__file__).resolve().is_relative_to(Path(root).resolve()), bhvit.__file__
torch.manual_seed(0)
model = bhvit.create_model(arch, precision=precision, img_size=int(size)).eval()
packed = bhvit.engine.pack(model)
torch.set_num_threads(int(threads))
# thread and ISA settings: the engine's (revisions before the runtime), the runtime's (since), or both
settings = [m for m in (bhvit.engine, getattr(bhvit, "runtime", None)) if hasattr(m, "set_num_threads")]
for module in settings:
    module.set_num_threads(int(threads))
    if isa:
        module.set_isa(isa)
x = torch.from_numpy(np.load(sys.argv[8]))
import time
with torch.inference_mode():
    packed(x)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "time":
            t0 = time.perf_counter()
            for _ in range(int(cmd[1])):
                packed(x)
            print(time.perf_counter() - t0, flush=True)
        elif cmd[0] == "logits":
            print(json.dumps(packed(x).tolist()), flush=True)
        else:
            break
"""


def prepare(rev: str, workdir: Path) -> Path:
    """``git archive REV`` unpacked under workdir, its extension built in place (once)."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = workdir / f"rev-{sha[:12]}"
    stamp = tree / ".built"
    if stamp.exists():
        return tree
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    print(f"building the native code of {sha[:12]} in {tree} ...", file=sys.stderr, flush=True)
    build_in_place(tree)
    stamp.write_text(sha + "\n")
    return tree


def build_in_place(tree: Path) -> None:
    """Builds a revision's native code into its own package folders, so that ``PYTHONPATH=tree`` imports it:
    ``setup.py build_ext --inplace`` for the revisions that had setup.py, else the CMake build of the root
    CMakeLists.txt installed with the tree itself as the prefix (its destinations are package folders)."""
    if (tree / "setup.py").is_file():
        env = {**os.environ, "BHVIT_REQUIRE_EXT": "1"}
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
        subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
        return
    import pybind11

    build = tree / "build" / "bench"
    for cmd in (
        ["cmake", "-S", tree, "-B", build, "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"]
        + [f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        ["cmake", "--build", build, "-j", str(os.cpu_count() or 1)],
        ["cmake", "--install", build, "--prefix", tree],
    ):
        subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def revision_python(tree: Path) -> tuple[list[str], dict[str, str]]:
    """The interpreter line and environment that import a revision tree's own ``bhvit``: ``-S`` skips the
    site hooks, among them the editable install's import finder (which would serve this checkout's package
    whatever PYTHONPATH says); the environment's site-packages follow the tree on the path, for torch and
    numpy."""
    import sysconfig

    paths = [str(tree), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [sys.executable, "-S"], {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


class Worker:
    """The earlier revision's packed model in its own process."""

    def __init__(self, tree: Path, args: argparse.Namespace, image: Path) -> None:
        python, env = revision_python(tree)
        cmd = [
            *python,
            "-c",
            WORKER,
            str(tree),
            args.model,
            args.precision,
            str(args.img_size),
            str(args.batch),
            str(args.threads),
            args.isa or "",
            str(image),
        ]
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._read() != "ready":
            raise RuntimeError("the revision's worker did not start")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the revision's worker exited (code {self.proc.wait()})")
        return line.strip()

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def calls_for(fn, seconds: float) -> int:  # noqa: ANN001
    """How many calls of fn fill about ``seconds``."""
    t0 = time.perf_counter()
    fn()
    return max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))


def timed(fn, n: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="1cb9152", help="the earlier revision (default: before the runtime, issue 11)")
    p.add_argument("--model", default="bhvit_small")
    p.add_argument("--precision", default="binary", choices=["binary", "some_fp"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--isa", default=None, help="kernel path for both packed models, e.g. avx2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-seconds", type=float, default=1.0, help="time per method and round")
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "bhvit" / "revisions")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import bhvit
    import bhvit.runtime as rt
    from bhvit.engine.bench import machine_info
    from bhvit.engine.program import write_program_file

    tree = prepare(args.rev, args.workdir)
    torch.manual_seed(0)
    model = bhvit.create_model(args.model, precision=args.precision, img_size=args.img_size).eval()
    x = torch.randn(args.batch, model.config.in_chans, *model.config.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        image, packed_path = Path(tmp) / "x.npy", Path(tmp) / "model.bhvp"
        np.save(image, x.numpy())
        write_program_file(model, packed_path)
        runtime = rt.load(packed_path)
        worker = Worker(tree, args, image)
    rt.set_num_threads(args.threads)
    if args.isa:
        rt.set_isa(args.isa)
    torch.set_num_threads(args.threads)
    xn = x.numpy()
    try:
        with torch.inference_mode():
            fp32_logits = model(x).numpy()
            rev_logits = np.asarray(json.loads(worker.ask("logits")), dtype=np.float32)
            run_logits = runtime.run(xn)
            n_rt = calls_for(lambda: runtime.run(xn), args.round_seconds)
            n_fp = calls_for(lambda: model(x), args.round_seconds)
            n_rev = max(1, int(args.round_seconds / float(worker.ask("time 1"))))
            rounds: dict[str, list[float]] = {"runtime": [], "revision": [], "fp32": []}
            for _ in range(args.rounds):  # interleaved: background load hits all three alike
                rounds["runtime"].append(timed(lambda: runtime.run(xn), n_rt))
                rounds["revision"].append(float(worker.ask(f"time {n_rev}")) / n_rev)
                rounds["fp32"].append(timed(lambda: model(x), n_fp))
    finally:
        worker.close()
    best = {k: min(v) for k, v in rounds.items()}
    result = {
        "machine": machine_info(),
        "revision": args.rev,
        "model": args.model,
        "precision": args.precision,
        "img_size": args.img_size,
        "batch": args.batch,
        "threads": args.threads,
        "isa": args.isa or rt.isa(),
        "rounds": rounds,
        "runtime_ms": best["runtime"] * 1e3,
        "revision_ms": best["revision"] * 1e3,
        "fp32_ms": best["fp32"] * 1e3,
        "speedup_vs_revision": best["revision"] / best["runtime"],
        "speedup_vs_fp32": best["fp32"] / best["runtime"],
        "top1_runtime_eq_fp32": bool((run_logits.argmax(1) == fp32_logits.argmax(1)).all()),
        "top1_revision_eq_fp32": bool((rev_logits.argmax(1) == fp32_logits.argmax(1)).all()),
        # the same weights and image: equal bits unless a kernel's summation order changed since the revision
        "logits_bit_identical_to_revision": bool(np.array_equal(run_logits, rev_logits)),
        "max_abs_diff_vs_revision": float(np.abs(run_logits - rev_logits).max()),
    }
    print(
        f"{args.model} {args.precision} {args.img_size}px B={args.batch} threads={args.threads} "
        f"isa={result['isa']} (best of {args.rounds} interleaved rounds)"
    )
    print(f"  runtime {result['runtime_ms']:8.1f} ms")
    print(f"  {args.rev:>7} {result['revision_ms']:8.1f} ms   x{result['speedup_vs_revision']:.2f}")
    print(f"  fp32    {result['fp32_ms']:8.1f} ms   x{result['speedup_vs_fp32']:.2f}")
    print(
        f"  top-1 equal to fp32: runtime {result['top1_runtime_eq_fp32']}, revision {result['top1_revision_eq_fp32']}"
    )
    print(
        f"  logits bit-identical to {args.rev}: {result['logits_bit_identical_to_revision']} "
        f"(max |diff| {result['max_abs_diff_vs_revision']:.3g})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
