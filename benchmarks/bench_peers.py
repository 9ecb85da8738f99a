"""The packed runtime against the runtimes a user would pick instead: the binary model in ``bhvit.runtime``
against its full-precision twin (``precision="fp"``, same widths and depths) in OpenVINO, onnxruntime and
torch, and the float-simulated binary model in torch.

Competitors (each in a worker process of its own; ``--competitors`` picks some):

* ``bhvit``: the packed binary model (``.bhvp``) in ``bhvit.runtime`` (numpy only, no torch);
* ``openvino``: the twin's ONNX at OpenVINO's default precision (bf16 on CPUs with AMX or AVX-512-BF16);
* ``openvino_f32``: the same with ``INFERENCE_PRECISION_HINT=f32``;
* ``openvino_int8``: the twin quantized to int8 by NNCF post-training quantization (``nncf.quantize``,
  default settings, ``--calibration`` random images), at OpenVINO's default precision for the rest;
* ``onnxruntime_fp32`` and ``onnxruntime_int8`` (``onnxruntime.quantization.quantize_dynamic``, int8 weights);
* ``torch_fp32``: the twin in PyTorch (``torch.inference_mode``);
* ``torch_binary_sim``: the binary model in PyTorch, binarization simulated in fp32.

Every one runs on the same number of threads (OpenVINO ``INFERENCE_NUM_THREADS`` with the latency hint,
onnxruntime ``intra_op_num_threads`` with one inter-op thread, ``torch.set_num_threads``,
``bhvit.runtime.set_num_threads``; ``OMP_NUM_THREADS`` too). After a warm-up, the competitors are timed in
interleaved rounds (each round: every worker in turn, in a rotating order, calls its forward for at least
``--min-round`` seconds); a competitor's time is the **median of its rounds** (the best round is kept in the
JSON too). Each round also measures the runtime's binary GEMM peak (:func:`bhvit.engine.bench.kernel_peak`); the
**ideal share** is the model's binary MACs (``bhvit.profile_model(...).bops`` times the batch) at the best
peak of the run, divided by the runtime's time. A competitor whose package is missing is skipped with the
install command; one that fails is reported as failed, and the others go on.

``--isa avx2`` runs the runtime on its AVX2 path (``bhvit.runtime.set_isa``) and torch with
``MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``; OpenVINO and onnxruntime run
as they are (their own choice of instructions).

    pip install -e '.[bench]'                      # OpenVINO and NNCF (optional; onnxruntime is in [onnx])
    python benchmarks/bench_peers.py               # bhvit_small and bhvit_tiny, 224 px, batch 1 and 32, 1 and 2 threads
    python benchmarks/bench_peers.py --isa avx2    # writes benchmarks/results/bench_peers_avx2.json
    python benchmarks/bench_peers.py --models bhvit_tiny --batch 1 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TORCH_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
CPU_FLAGS = [
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vpopcntdq",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
]
SETUP_TIMEOUT = 900.0  # seconds a worker may take to load and compile its model
ROUND_TIMEOUT = 900.0  # seconds one round of one worker may take (a batch-32 forward of the slowest is ~10 s)


@dataclass(frozen=True)
class Competitor:
    """A runtime and model a user could deploy: the file it runs (``file`` names an artifact of
    :func:`prepare`), the Python modules it needs and the command that installs them."""

    label: str
    file: str
    modules: tuple[str, ...]
    install: str


BENCH_EXTRA = "pip install 'bhvit[bench]' (OpenVINO and NNCF)"
ONNX_EXTRA = "pip install 'bhvit[onnx]'"
COMPETITORS = {
    "bhvit": Competitor("bhvit runtime (binary)", "packed", (), ""),
    "openvino": Competitor("OpenVINO default", "onnx_fp", ("openvino", "onnx"), BENCH_EXTRA),
    "openvino_f32": Competitor("OpenVINO f32", "onnx_fp", ("openvino", "onnx"), BENCH_EXTRA),
    "openvino_int8": Competitor("OpenVINO int8 (NNCF)", "openvino_int8", ("openvino", "nncf", "onnx"), BENCH_EXTRA),
    "onnxruntime_fp32": Competitor("onnxruntime fp32", "onnx_fp", ("onnxruntime", "onnx"), ONNX_EXTRA),
    "onnxruntime_int8": Competitor("onnxruntime int8 dyn.", "onnx_int8", ("onnxruntime", "onnx"), ONNX_EXTRA),
    "torch_fp32": Competitor("torch fp32", "checkpoint_fp", ("torch",), ""),
    "torch_binary_sim": Competitor("torch binary sim.", "checkpoint_binary", ("torch",), ""),
}
PEERS = [k for k in COMPETITORS if k not in ("bhvit", "torch_binary_sim")]  # the fp twin in other runtimes


# ---------------------------------------------------------------------------------------------------------
# worker side: one competitor's forward, timed on request (imports only what that competitor needs)
# ---------------------------------------------------------------------------------------------------------


def images(spec: dict[str, Any]) -> Any:
    """The batch every worker times: standard normal (already normalised) float32 (B, C, H, W), seed 0."""
    import numpy as np

    shape = (spec["batch"], spec["in_chans"], spec["img_size"], spec["img_size"])
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def setup_bhvit(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import bhvit.runtime as rt

    if spec["isa"]:
        rt.set_isa(spec["isa"])
    rt.set_num_threads(spec["threads"])
    model, x = rt.load(spec["file"]), images(spec)
    return (lambda: model.run(x)), {"isa": rt.isa(), "threads": rt.get_num_threads()}


def setup_openvino(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(spec["file"])
    x = images(spec)
    model.reshape(list(x.shape))  # a static shape, as a deployment compiles it
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": spec["threads"], "PERFORMANCE_HINT": "LATENCY"}
    if spec["competitor"] == "openvino_f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    info = {
        "version": ov.__version__,
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "streams": int(compiled.get_property("NUM_STREAMS")),
    }
    return (lambda: request.infer({0: x})), info


def setup_onnxruntime(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = spec["threads"]
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(spec["file"], opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: images(spec)}
    return (lambda: sess.run(None, feed)), {"version": ort.__version__}


def setup_torch(spec: dict[str, Any]) -> tuple[Callable[[], Any], dict[str, Any]]:
    import torch

    import bhvit

    torch.set_num_threads(spec["threads"])
    model = bhvit.load_model(spec["file"])[0].eval()
    x = torch.from_numpy(images(spec))

    def forward() -> Any:
        with torch.inference_mode():
            return model(x)

    info = {"version": torch.__version__, "threads": torch.get_num_threads(), "cpu_capability": cpu_capability()}
    return forward, info


def cpu_capability() -> str:
    """The instructions torch's own kernels use (``ATEN_CPU_CAPABILITY`` caps them)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


SETUPS = {
    "bhvit": setup_bhvit,
    "openvino": setup_openvino,
    "openvino_f32": setup_openvino,
    "openvino_int8": setup_openvino,
    "onnxruntime_fp32": setup_onnxruntime,
    "onnxruntime_int8": setup_onnxruntime,
    "torch_fp32": setup_torch,
    "torch_binary_sim": setup_torch,
}


def timed_round(fn: Callable[[], Any], min_seconds: float) -> dict[str, float]:
    """Calls fn at least once and for at least min_seconds: wall and process CPU seconds per call."""
    n, start, cpu0 = 0, time.perf_counter(), time.process_time()
    while n == 0 or time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return {"seconds": (time.perf_counter() - start) / n, "cpu_seconds": (time.process_time() - cpu0) / n, "calls": n}


def worker_main() -> int:
    """The worker: reads its spec (one JSON line), sets up and warms its forward, answers ``ready`` (or
    ``error``), then answers each ``{"round": min_seconds}`` with a timed round until its input closes.
    Replies go to the original stdout; whatever the libraries print goes to stderr."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        reply.write(json.dumps(message) + "\n")

    spec = json.loads(sys.stdin.readline())
    try:
        start = time.perf_counter()
        fn, info = SETUPS[spec["competitor"]](spec)
        fn()
        fn()  # warm-up: first-call allocation and compilation
        send({"ready": {**info, "setup_seconds": time.perf_counter() - start}})
    except Exception as e:  # reported to the parent, which goes on with the others
        send({"error": f"{type(e).__name__}: {str(e).strip()[:400]}"})
        return 1
    for line in sys.stdin:
        request = json.loads(line)
        send(timed_round(fn, float(request["round"])))
    return 0


def quantize_openvino_main(onnx_path: str, xml_path: str, samples: int, img_size: int, in_chans: int) -> int:
    """NNCF post-training int8 quantization of the twin's ONNX (default settings) on ``samples`` random
    normalised images, saved as OpenVINO IR (run as a worker process: NNCF is heavy and may fail)."""
    import nncf
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(onnx_path)
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((1, in_chans, img_size, img_size), dtype=np.float32) for _ in range(samples)]
    quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=samples)
    ov.save_model(quantized, xml_path)
    return 0


# ---------------------------------------------------------------------------------------------------------
# parent side: artifacts, workers, interleaved rounds, report
# ---------------------------------------------------------------------------------------------------------


class Worker:
    """A worker process of one competitor, spoken to in JSON lines; its stderr goes to a log file whose tail
    explains a failure."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self._buffer = b""
        self.send(spec)

    def send(self, message: dict[str, Any]) -> None:
        """Writes one request; to a worker that has gone, nothing (:meth:`receive` then reports its exit)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next reply; a worker that exits or stays silent past timeout gives ``{"error": ...}``."""
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.close()
                return {"error": f"no answer within {timeout:.0f} s{self._tail()}"}
            chunk = os.read(fd, 65536)
            if not chunk:
                status = self.proc.wait()
                return {"error": f"the worker exited with status {status}{self._tail()}"}
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines() if self.log.is_file() else []
        return f": {' | '.join(text[-3:])[-400:]}" if text else ""

    def close(self) -> None:
        """Ends the worker: its input closes (it exits when idle); one still busy after 10 s is killed."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


def missing_modules(name: str) -> str | None:
    """The install command when a module competitor ``name`` needs is not installed, else None."""
    comp = COMPETITORS[name]
    missing = [m for m in comp.modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed: {comp.install}" if missing else None


def prepare(
    name: str, img_size: int, folder: Path, wanted: Sequence[str], calibration: int, env: dict[str, str]
) -> tuple[dict[str, Path | str], int, int]:
    """The files the competitors run, for model ``name``: the binary model packed and as a checkpoint, the
    fp twin (same seed-0 initialisation rule) as a checkpoint and in ONNX (``bhvit export``'s path), the
    ONNX quantized dynamically to int8 and the NNCF int8 OpenVINO IR. An artifact that fails is the error
    text instead of a path. Also the model's binary MACs per image and its input channels."""
    import torch

    import bhvit
    from bhvit.engine.program import write_program_file

    torch.manual_seed(0)
    binary = bhvit.create_model(name, precision="binary", img_size=img_size).eval()
    twin = bhvit.create_model(name, precision="fp", img_size=img_size).eval()
    files: dict[str, Path | str] = {}

    def make(key: str, build: Callable[[], Path]) -> None:
        try:
            files[key] = build()
        except Exception as e:
            files[key] = f"preparing {key} failed: {type(e).__name__}: {str(e).strip()[:300]}"

    needs = {COMPETITORS[c].file for c in wanted}
    make("packed", lambda: write_program_file(binary, folder / "binary.bhvp"))
    make("checkpoint_binary", lambda: bhvit.save_model(binary, folder / "binary.safetensors"))
    make("checkpoint_fp", lambda: bhvit.save_model(twin, folder / "fp.safetensors"))
    if needs & {"onnx_fp", "onnx_int8", "openvino_int8"}:
        make("onnx_fp", lambda: export_twin(twin, folder / "fp.onnx"))
    if "onnx_int8" in needs:
        make("onnx_int8", lambda: quantize_onnx(files["onnx_fp"], folder / "int8.onnx"))
    if "openvino_int8" in needs:
        make("openvino_int8", lambda: quantize_openvino(files["onnx_fp"], folder, calibration, binary, env))
    from bhvit.profile import profile_model

    return files, profile_model(binary).bops, binary.config.in_chans


def export_twin(model: Any, path: Path) -> Path:
    from bhvit.export import export_onnx

    return Path(export_onnx(model, path, check=False)["path"])


def quantize_onnx(source: Path | str, path: Path) -> Path:
    if not isinstance(source, Path):
        raise RuntimeError(source)
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph first, on every call
    try:
        quantize_dynamic(source, path, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return path


def quantize_openvino(source: Path | str, folder: Path, samples: int, model: Any, env: dict[str, str]) -> Path:
    if not isinstance(source, Path):
        raise RuntimeError(source)
    xml = folder / "int8.xml"
    size, chans = model.config.img_size[0], model.config.in_chans
    cmd = [sys.executable, __file__, "--quantize-openvino", str(source), str(xml), str(samples), str(size), str(chans)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"NNCF quantization exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return xml


def peer_env() -> dict[str, str]:
    """This process's environment without the settings that cap torch's instructions: OpenVINO's CPU plugin
    reads ONEDNN_MAX_CPU_ISA too (capped at AVX2 it finds no MaxPool kernel and fails), and the peers run as
    they are."""
    return {k: v for k, v in os.environ.items() if k not in TORCH_AVX2}


def worker_env(threads: int, isa: str | None, competitor: str) -> dict[str, str]:
    torch_side = competitor == "bhvit" or competitor.startswith("torch")
    env = {**(os.environ if torch_side else peer_env()), "OMP_NUM_THREADS": str(threads)}
    if isa == "avx2" and competitor.startswith("torch"):
        env.update(TORCH_AVX2)
    return env


def measure_config(
    specs: dict[str, dict[str, Any]], threads: int, isa: str | None, rounds: int, min_round: float, logs: Path
) -> tuple[dict[str, dict[str, Any]], float]:
    """Starts a worker per spec (a spec with ``error`` is reported as it is), times the ready ones in
    ``rounds`` interleaved rounds, and measures the runtime's kernel peak on ``threads`` threads in each
    round: (per competitor its result, the best kernel peak in binary MACs per second)."""
    from bhvit.engine.bench import kernel_peak

    results: dict[str, dict[str, Any]] = {k: dict(s) for k, s in specs.items() if "error" in s}
    workers = {
        k: Worker(s, worker_env(threads, isa, k), logs / f"{k}.log") for k, s in specs.items() if "error" not in s
    }
    for k, w in workers.items():
        answer = w.receive(SETUP_TIMEOUT)
        results[k] = {"info": answer["ready"], "rounds": [], "cpu_rounds": []} if "ready" in answer else answer
    live = [k for k in workers if "error" not in results[k]]
    for k in workers:
        if k not in live:
            workers[k].close()
    peak = 0.0
    for r in range(rounds):
        peak = max(peak, kernel_peak(threads, seconds=0.2))
        shift = r % max(len(live), 1)  # a rotating order: no competitor always runs right after another
        for k in live[shift:] + live[:shift]:
            if "error" in results[k]:  # failed in an earlier round
                continue
            workers[k].send({"round": min_round})
            answer = workers[k].receive(ROUND_TIMEOUT)
            if "error" in answer:
                results[k] = answer
                continue
            results[k]["rounds"].append(answer["seconds"])
            results[k]["cpu_rounds"].append(answer["cpu_seconds"])
            time.sleep(0.05)  # let the last worker's threads go idle before the next one runs
    for w in workers.values():
        w.close()
    return results, peak


def summarise(result: dict[str, Any], batch: int) -> dict[str, Any]:
    """Median and best round of a competitor's rounds (seconds per call) as milliseconds."""
    import statistics

    if "error" in result:
        return result
    med = statistics.median(result["rounds"])
    return {
        **result,
        "ms": med * 1e3,
        "ms_best": min(result["rounds"]) * 1e3,
        "ms_per_image": med * 1e3 / batch,
        "cpu_ms": statistics.median(result["cpu_rounds"]) * 1e3,
    }


def bench(args: argparse.Namespace, logs: Path, save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every configuration: rows of (model, batch, threads) with each competitor's result, printed and
    saved (``save(rows so far)``) as each is measured."""
    from bhvit import runtime

    if args.isa:
        runtime.set_isa(args.isa)
    wanted = [c for c in args.competitors if missing_modules(c) is None]
    rows = []
    for name in args.models:
        folder = logs / name
        folder.mkdir()
        files, bops, in_chans = prepare(name, args.img_size, folder, wanted, args.calibration, peer_env())
        for threads in args.threads:
            for batch in args.batch:
                specs = {}
                for c in args.competitors:
                    path = files.get(COMPETITORS[c].file)
                    if missing_modules(c):
                        specs[c] = {"error": f"skipped: {missing_modules(c)}", "skipped": True}
                    elif not isinstance(path, Path):
                        specs[c] = {"error": str(path)}
                    else:
                        specs[c] = {"competitor": c, "file": str(path), "batch": batch, "threads": threads}
                        specs[c].update({"img_size": args.img_size, "in_chans": in_chans, "isa": args.isa})
                results, peak = measure_config(specs, threads, args.isa, args.rounds, args.min_round, folder)
                row = {"model": name, "batch": batch, "threads": threads, "bops_per_image": bops}
                row["competitors"] = {k: summarise(results[k], batch) for k in args.competitors}
                row.update(ideal(row, peak))
                rows.append(row)
                print(format_rows([row], args.competitors, header=len(rows) == 1), flush=True)
                save(rows)
    return rows


def ideal(row: dict[str, Any], peak: float) -> dict[str, Any]:
    """The runtime's ideal time (binary MACs at the kernel peak), its share of the measured time, the best
    peer and the runtime's speed-up over it."""
    out: dict[str, Any] = {
        "kernel_peak_gbops": peak / 1e9,
        "ideal_ms": row["bops_per_image"] * row["batch"] / peak * 1e3,
    }
    comps = row["competitors"]
    ours = comps.get("bhvit", {}).get("ms")
    if ours:
        out["ideal_share"] = out["ideal_ms"] / ours
    peers = {k: comps[k]["ms"] for k in PEERS if "ms" in comps.get(k, {})}
    if peers:
        best = min(peers, key=peers.__getitem__)
        out["best_peer"] = best
        if ours:
            out["speedup_vs_best_peer"] = peers[best] / ours
            if "torch_fp32" in peers:
                out["speedup_vs_torch_fp32"] = peers["torch_fp32"] / ours
    return out


def format_rows(rows: list[dict[str, Any]], competitors: Sequence[str], header: bool = True) -> str:
    """The table: ms per image (median of rounds) per competitor, the runtime's speed-up over the best peer,
    and its ideal share."""
    heads = ["model", "B", "thr", *competitors, "x best peer", "ideal %"]
    lines = []
    for r in rows:
        cells = [r["model"], str(r["batch"]), str(r["threads"])]
        for c in competitors:
            res = r["competitors"][c]
            cells.append(f"{res['ms_per_image']:.1f}" if "ms" in res else ("skip" if res.get("skipped") else "fail"))
        speedup = r.get("speedup_vs_best_peer")
        cells.append(f"{speedup:.2f} ({COMPETITORS[r['best_peer']].label})" if speedup else "-")
        cells.append(f"{r['ideal_share']:.0%}" if "ideal_share" in r else "-")
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(heads)]
    text = ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in lines]
    if header:
        text.insert(0, "  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    return "\n".join(text)


def failures(rows: list[dict[str, Any]]) -> list[str]:
    """One line per competitor that failed or was skipped (first occurrence)."""
    seen: dict[str, str] = {}
    for r in rows:
        for k, res in r["competitors"].items():
            if "error" in res and k not in seen:
                seen[k] = res["error"]
    return [f"  {k}: {e}" for k, e in seen.items()]


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that matter, core counts, load and the versions of every runtime compared."""
    from importlib import metadata

    from bhvit.engine.bench import machine_info as base

    info = base()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        line = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    info["cpu_flags"] = {f: f in flags for f in CPU_FLAGS}
    info["affinity_cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    for pkg in ("numpy", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bhvit_small", "bhvit_tiny"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (default 3)")
    p.add_argument("--min-round", type=float, default=0.5, help="seconds of forwards per worker and round")
    p.add_argument("--calibration", type=int, default=300, help="NNCF calibration images (random, default 300)")
    p.add_argument("--isa", default=None, help="the runtime's kernel path (avx2 also caps torch's)")
    p.add_argument("--json", default=None, help="default benchmarks/results/bench_peers[_ISA].json")
    args = p.parse_args(argv)
    if min(args.batch + args.threads + [args.rounds, args.calibration, args.img_size]) < 1:
        p.error("--batch, --threads, --rounds, --calibration and --img-size must be at least 1")
    from bhvit import runtime

    if args.isa and args.isa not in runtime.available_isas():
        p.error(
            f"--isa {args.isa} is not available here; this CPU and build offer {', '.join(runtime.available_isas())}"
        )
    path = Path(args.json or RESULTS / f"bench_peers{'_' + args.isa if args.isa else ''}.json")
    note = " (OpenVINO and onnxruntime as they are)" if args.isa else ""
    print(f"runtime isa {args.isa or runtime.isa()}{note}; ms per image, median of {args.rounds} interleaved rounds")
    from bhvit.checkpoint import atomic_write

    def save(rows: list[dict[str, Any]], complete: bool = False) -> None:
        record = {
            "machine": machine_info(),
            "isa": args.isa or runtime.isa(),
            "statistic": f"median of {args.rounds} interleaved rounds (ms_best: the best round)",
            "complete": complete,  # False while the run goes on (or after it was stopped)
            "rows": rows,
        }
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))

    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        rows = bench(args, Path(tmp), save)
    save(rows, complete=True)
    lines = failures(rows)
    if lines:
        print("not measured:\n" + "\n".join(lines))
    for r in rows:
        if "ideal_share" in r:
            print(
                f"ideal {r['model']} B={r['batch']} threads={r['threads']}: {r['ideal_ms']:.2f} ms at "
                f"{r['kernel_peak_gbops']:.0f} G bit-MAC/s = {r['ideal_share']:.0%} of the runtime's "
                f"{r['competitors']['bhvit']['ms']:.2f} ms"
            )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker_main())
    if sys.argv[1:2] == ["--quantize-openvino"]:
        a = sys.argv[2:]
        sys.exit(quantize_openvino_main(a[0], a[1], int(a[2]), int(a[3]), int(a[4])))
    sys.exit(main())
