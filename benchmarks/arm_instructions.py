"""Instructions per forward on 64-bit ARM, counted under qemu-user: the packed runtime (NEON kernels) on the
binary model against onnxruntime fp32 (its aarch64 wheel) on the full-precision twin of the same architecture.

No ARM machine is needed: qemu-aarch64 runs both, and a TCG plugin (benchmarks/arm/count_insns.c) counts the
guest instructions between markers that the two drivers place around each forward (benchmarks/arm/
forward_runtime.c, benchmarks/arm/forward_onnxruntime.py). After one warm-up forward, each of ``--forwards``
forwards is counted alone; the median counts, and the spread between forwards is reported. This is a
regression guard for the ARM path, not a speed claim: an instruction is not a cycle.

    python benchmarks/arm_instructions.py                    # bhvit_tiny, 224 px, batch 1, 1 thread
    python benchmarks/arm_instructions.py --cpu neoverse-n1 --json out/arm.json

Prerequisites (docs/engine.md, "Instruction counts on ARM"): qemu-user, the aarch64 cross compilers, cmake
and a host C compiler; for the plugin's header QEMU's source package (a deb-src line); for onnxruntime an
aarch64 Python from Debian's arm64 packages (``dpkg --add-architecture arm64``) and the aarch64 wheels of
numpy and onnxruntime from PyPI. The script fetches what it can into ``--cache`` (default
``~/.cache/bhvit/arm``) once; a missing prerequisite ends it with exit status 3 and the command that
installs it (status 1: a run failed or the ratio is below ``--min-ratio``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARM = ROOT / "benchmarks" / "arm"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # the cross toolchain's libc (libc6-arm64-cross)
MISSING_STATUS = 3
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bhvit" / "arm"
TOOLS = {  # program -> Debian package
    "qemu-aarch64": "qemu-user",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "cmake": "cmake",
    "cc": "gcc",
}
# /proc/cpuinfo for the -L root (onnxruntime's cpuinfo reads it; qemu-user shows the host's): the emulated
# CPU's MIDR fields (variant, part, revision). qemu's "max" (SVE and more, no real part) is left out: its
# counts would describe no machine.
CPUS = {"cortex-a76": ("0x4", "0xd0b", "1"), "neoverse-n1": ("0x3", "0xd0c", "1")}
FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
DEB_SRC_HINT = (
    "add a deb-src line for Debian's main archive (e.g. /etc/apt/sources.list.d/debian-src.sources with "
    "'Types: deb-src', the URIs/Suites/Components of debian.sources) and run `apt-get update`, or pass "
    "--plugin-header PATH (include/qemu/qemu-plugin.h of the installed qemu's source)"
)


class Missing(Exception):
    """A prerequisite is missing; the message says how to install it."""


def run(cmd: list[str | Path], timeout: float = 1800, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs cmd; a failure raises RuntimeError with its last output."""
    cmd = [str(c) for c in cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return done


def check_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise Missing(f"missing tools: apt-get install {' '.join(sorted(set(missing)))}")


def plugin_header(cache: Path, given: Path | None) -> Path:
    """qemu-plugin.h of the installed qemu: given, cached, or taken from its Debian source package."""
    if given is not None:
        if not given.is_file():
            raise Missing(f"--plugin-header {given} does not exist")
        return given
    header = cache / "qemu-plugin.h"
    if header.is_file():
        return header
    if shutil.which("apt-get") is None:
        raise Missing(f"qemu-plugin.h is not cached in {cache} and apt-get is missing: pass --plugin-header PATH")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for spec in [f"qemu={version}", "qemu"] if version else ["qemu"]:
            got = subprocess.run(
                ["apt-get", "source", "--download-only", spec], cwd=tmp, capture_output=True, text=True, check=False
            )
            if got.returncode == 0:
                break
        else:
            raise Missing(f"cannot fetch QEMU's source ({got.stderr.strip().splitlines()[-1:]}): {DEB_SRC_HINT}")
        tarball = next(Path(tmp).glob("qemu_*.orig.tar.*"))
        with tarfile.open(tarball) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("include/qemu/qemu-plugin.h"))
            header.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return header


def build_plugin(cache: Path, header: Path) -> Path:
    """libcount_insns.so for the host's qemu-aarch64."""
    out = cache / "libcount_insns.so"
    source = ARM / "count_insns.c"
    if not out.is_file() or out.stat().st_mtime < max(source.stat().st_mtime, header.stat().st_mtime):
        run(["cc", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", f"-I{header.parent}", source, "-o", out])
    return out


def build_runtime(cache: Path) -> Path:
    """The runtime cross-built for aarch64 (CMake, incremental) and forward_runtime linked against it. One
    build folder per checkout: CMake refuses a folder configured from another source tree (a second
    worktree sharing the cache)."""
    build = cache / f"build-arm-{hashlib.sha1(str(ROOT.resolve()).encode()).hexdigest()[:12]}"
    toolchain = ROOT / "runtime" / "cmake" / "aarch64-linux-gnu.cmake"
    run(["cmake", "-S", ROOT / "runtime", "-B", build, f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"])
    run(["cmake", "--build", build, "-j", str(os.cpu_count() or 1)])
    exe = build / "forward_runtime"
    flags = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror"]
    include, source = ROOT / "runtime" / "include", ARM / "forward_runtime.c"
    link = [f"-L{build}", f"-Wl,-rpath,{build}", "-lbhvit_runtime"]
    run(["aarch64-linux-gnu-gcc", *flags, f"-I{include}", source, "-o", exe, *link])
    return exe


def debian_python(cache: Path) -> tuple[Path, str]:
    """An aarch64 CPython from Debian's arm64 packages, unpacked (``dpkg-deb -x``) into cache/root:
    (the root, the version "3.X")."""
    root = cache / "root"
    done = root / ".bhvit-complete"
    if done.is_file():
        return root, done.read_text().strip()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Missing("an aarch64 Python needs apt-get and dpkg-deb (Debian or Ubuntu)")
    depends = apt_depends("python3-minimal:arm64")
    minor = next((m.group(1) for d in depends if (m := re.fullmatch(r"python3\.(\d+)-minimal", d))), None)
    if minor is None:
        raise Missing("no arm64 package list: dpkg --add-architecture arm64 && apt-get update")
    version = f"3.{minor}"
    wanted = {f"python{version}-minimal", f"libpython{version}-minimal", f"libpython{version}-stdlib", "libstdc++6"}
    packages = set(wanted)
    for name in wanted:
        packages |= set(apt_depends(f"{name}:arm64"))
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", *sorted(f"{p}:arm64" for p in packages)], cwd=debs)
    for deb in sorted(debs.glob("*_arm64.deb")):
        run(["dpkg-deb", "-x", deb, root])
    done.write_text(version + "\n")
    return root, version


def apt_depends(package: str) -> list[str]:
    """The packages ``package`` depends on (``apt-cache depends``, :func:`parse_depends`)."""
    return parse_depends(
        subprocess.run(["apt-cache", "depends", package], capture_output=True, text=True, check=False).stdout
    )


def parse_depends(text: str) -> list[str]:
    """Package names of ``apt-cache depends`` output's Depends and PreDepends lines, without the architecture;
    of alternatives (a line starting ``|Depends:`` and the one after it) the first; virtual packages
    (``<name>``) skipped."""
    names, take = [], True
    for line in text.splitlines():
        m = re.match(r"\s*(\|)?(?:Pre)?Depends: (\S+)", line)
        if m and take and not m.group(2).startswith("<"):
            names.append(m.group(2).split(":")[0])
        take = not (m and m.group(1))  # "|Depends:": the next line is an alternative to this one
    return names


def wheels(cache: Path, python: str) -> tuple[Path, str]:
    """numpy and onnxruntime's aarch64 wheels (the host's versions when installed), unpacked into a folder
    for PYTHONPATH: (the folder, onnxruntime's version)."""
    pins = []
    for name in ("onnxruntime", "numpy"):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    site = cache / ("site-" + "-".join(pins).replace("==", "_"))
    if not (site / ".bhvit-complete").is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            platforms = [f"--platform=manylinux_2_{v}_aarch64" for v in (17, 27, 28, 31, 34)]
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *platforms]
            got = subprocess.run(
                [*cmd, f"--python-version={python}", "--implementation=cp", "-d", tmp, *pins],
                capture_output=True,
                text=True,
                check=False,
            )
            if got.returncode != 0:
                raise Missing(f"cannot download the aarch64 wheels of {' '.join(pins)}: {got.stderr.strip()[-300:]}")
            for wheel in Path(tmp).glob("*.whl"):
                shutil.unpack_archive(wheel, site, "zip")
        (site / ".bhvit-complete").write_text("\n".join(pins) + "\n")
    return site, next(p for p in (site / ".bhvit-complete").read_text().split() if p.startswith("onnxruntime"))


def write_cpuinfo(root: Path, cpu: str) -> None:
    """A /proc/cpuinfo of the emulated CPU under the -L root (one core)."""
    variant, part, revision = CPUS[cpu]
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {FEATURES}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n"
    )


def write_models(folder: Path, arch: str, img_size: int, batch: int) -> tuple[Path, Path, Path]:
    """The binary model packed (.bhvp), its full-precision twin in ONNX (``bhvit export``'s path, dynamic batch)
    and a batch of random images (float32), all seeded."""
    import numpy as np
    import torch

    import bhvit
    from bhvit.engine.program import write_program_file
    from bhvit.export import export_onnx

    torch.manual_seed(0)
    binary = bhvit.create_model(arch, precision="binary", img_size=img_size).eval()
    packed = write_program_file(binary, folder / "model.bhvp")
    twin = bhvit.create_model(arch, precision="fp", img_size=img_size).eval()
    onnx_path = Path(export_onnx(twin, folder / "twin.onnx", check=False)["path"])
    images = folder / "images.f32"
    rng = np.random.default_rng(0)
    rng.standard_normal((batch, binary.config.in_chans, img_size, img_size), dtype=np.float32).tofile(images)
    return packed, onnx_path, images


def count(qemu: list[str | Path], program: list[str | Path], counts: Path, env: dict[str, str]) -> dict[str, Any]:
    """Runs program under qemu with the counting plugin writing to counts (:func:`parse_counts`)."""
    run([*qemu, *program], env=env)
    return parse_counts(counts.read_text(), str(counts))


def parse_counts(text: str, source: str = "counts") -> dict[str, Any]:
    """The plugin's ``mark <tag> <vcpu> <own> <all>`` lines -> the instructions of each forward between
    consecutive markers (every thread), their median, spread ((max - min) / median) and the share that threads
    other than the marking one executed."""
    marks = [line.split() for line in text.splitlines() if line.startswith("mark ")]
    if len(marks) < 2:
        raise RuntimeError(f"{source}: no complete forward was marked ({len(marks)} markers)")
    own = [int(m[3]) for m in marks]
    every = [int(m[4]) for m in marks]
    forwards = [b - a for a, b in zip(every, every[1:])]
    median = statistics.median(forwards)
    other = (every[-1] - every[0]) - (own[-1] - own[0])
    return {
        "per_forward": forwards,
        "instructions": int(median),
        "spread": (max(forwards) - min(forwards)) / median,
        "other_threads_share": other / (every[-1] - every[0]),
    }


def guest_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a guest program (qemu-user passes its own): nothing from the host's but PATH."""
    base = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return {**base, **extra}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    check_tools()
    plugin = build_plugin(cache, plugin_header(cache, args.plugin_header))
    exe = build_runtime(cache)
    root, python = debian_python(cache) if args.onnxruntime else (None, "")
    site, ort_version = wheels(cache, python) if root else (None, "")
    result: dict[str, Any] = {"model": args.model, "img_size": args.img_size, "batch": args.batch}
    result.update({"threads": args.threads, "cpu": args.cpu, "forwards": args.forwards, "machine": machine()})
    shape = [str(args.batch), str(args.forwards), str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        packed, onnx_path, images = write_models(Path(tmp), args.model, args.img_size, args.batch)
        qemu: list[str | Path] = ["qemu-aarch64", "-cpu", args.cpu, "-plugin"]
        out = Path(tmp) / "runtime.txt"
        program: list[str | Path] = ["-L", SYSROOT, exe, packed, images, *shape]
        result["runtime"] = count([*qemu, f"{plugin},out={out}"], program, out, guest_env({}))
        if root is not None and site is not None:
            write_cpuinfo(root, args.cpu)
            out = Path(tmp) / "onnxruntime.txt"
            program = ["-L", root, root / "usr" / "bin" / f"python{python}", ARM / "forward_onnxruntime.py"]
            env = guest_env({"PYTHONPATH": str(site), "PYTHONHASHSEED": "0"})
            ort = count([*qemu, f"{plugin},out={out}"], [*program, onnx_path, images, *shape], out, env)
            result["onnxruntime"] = {**ort, "version": ort_version.split("==")[-1]}
            result["ratio"] = ort["instructions"] / result["runtime"]["instructions"]
    return result


def machine() -> dict[str, str]:
    """The tools that made the counts."""

    def first_line(cmd: list[str]) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.splitlines()[0]

    return {
        "qemu": first_line(["qemu-aarch64", "--version"]),
        "cross_gcc": first_line(["aarch64-linux-gnu-gcc", "--version"]),
    }


def report(result: dict[str, Any]) -> str:
    head = (
        f"{result['model']} binary vs fp twin, {result['img_size']} px, batch {result['batch']}, "
        f"{result['threads']} thread(s), qemu -cpu {result['cpu']}; instructions per forward (median of "
        f"{result['forwards']}, spread between forwards):"
    )
    lines = [head]
    for name in ("runtime", "onnxruntime"):
        if name in result:
            r = result[name]
            label = "bhvit runtime (neon)" if name == "runtime" else f"onnxruntime {r['version']} fp32"
            lines.append(f"  {label:26s} {r['instructions'] / 1e6:10,.1f} M  (spread {r['spread']:.4%})")
    if "ratio" in result:
        lines.append(f"  ratio onnxruntime / runtime: {result['ratio']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bhvit_tiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--forwards", type=int, default=3, help="counted forwards after the warm-up (default 3)")
    p.add_argument("--cpu", default="cortex-a76", choices=sorted(CPUS), help="qemu's -cpu (default cortex-a76)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"downloads and builds (default {DEFAULT_CACHE})")
    p.add_argument("--plugin-header", type=Path, default=None, help="qemu-plugin.h of the installed qemu")
    p.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false", help="count the runtime only")
    p.add_argument("--min-ratio", type=float, default=None, help="exit 1 when onnxruntime/runtime is below it")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "arm_instructions.json"))
    args = p.parse_args(argv)
    for name in ("batch", "threads", "forwards", "img_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        result = measure(args)
    except Missing as e:
        print(f"arm_instructions: skipped, {e}", file=sys.stderr)
        return MISSING_STATUS
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"arm_instructions: {e}", file=sys.stderr)
        return 1
    print(report(result))
    from bhvit.checkpoint import atomic_write

    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    if args.min_ratio is not None and result.get("ratio", float("inf")) < args.min_ratio:
        print(f"arm_instructions: ratio {result['ratio']:.2f}x is below --min-ratio {args.min_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
