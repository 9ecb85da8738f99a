"""The package as users install it (slow): the sdist (built by the backend, scikit-build-core) installed with
pip into a fresh virtual environment outside the checkout runs a packed model written by this checkout: the
runtime through Python, through `bhvit predict --packed` and from a C program built with `python -m
bhvit.runtime --cflags --libs`, the training extension imports, and the logits are this checkout's bit for
bit. A broken compiler fails the install; BHVIT_NO_NATIVE=1 installs the Python package alone, whose runtime
then says how to build it (training uses torch's ops without the extension). `pip install .` from the
checkout (not editable) and the release wheel of scripts/build_wheel.sh (stripped, auditwheel-repaired) give
the same."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import ROOT, randomized

import bhvit
import bhvit.runtime as rt
from bhvit.engine.program import write_program_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("cmake", "cc", "readelf")), reason="needs cmake, cc and readelf"
    ),
]
TIMEOUT = 1800  # one native build from scratch: about 2 minutes on 2 idle cores
# the libraries a manylinux wheel may take from the system (auditwheel's policies), as the NEEDED names
MANYLINUX_SYSTEM = (
    r"^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux-x86-64|ld-linux-aarch64)\.so\.\d+$"
)

# Run by the fresh environment's Python outside the checkout: the logits of the packed model for the saved
# batch, and where everything came from.
CHECK = r"""
import json, sys
import numpy as np
import bhvit, bhvit._C, bhvit.runtime as rt  # bhvit._C: the training extension imports
from bhvit.runtime import paths
model, x, out = sys.argv[1:4]
np.save(out, rt.load(model).run(np.load(x)))
print(json.dumps({"version": bhvit.__version__, "package": bhvit.__file__, "library": str(paths.find_library()),
                  "include": str(paths.include_dir())}))
"""
# The same environment when installed with BHVIT_NO_NATIVE=1: no training extension (training uses torch's
# ops), no runtime library, and the runtime says how to build it.
CHECK_NO_NATIVE = r"""
import importlib.util, json
import bhvit, bhvit.runtime as rt
from bhvit.runtime.paths import RuntimeLibraryError, find_library
try:
    find_library()
    message = None
except RuntimeLibraryError as exc:
    message = str(exc)
print(json.dumps({"version": bhvit.__version__, "available": rt.available(), "message": message,
                  "extension": importlib.util.find_spec("bhvit._C") is not None}))
"""


def _env(**changes: str | None) -> dict[str, str]:
    """This process's environment without its virtual environment and bhvit's switches, plus ``changes``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "BHVIT_NO_NATIVE")}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def _run(cmd: list[str | Path], ok: bool = True, **kw: object) -> subprocess.CompletedProcess:
    kw.setdefault("env", _env())
    run = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT, **kw)
    if ok:
        assert run.returncode == 0, f"{' '.join(map(str, cmd))}\n{run.stdout[-4000:]}{run.stderr[-4000:]}"
    return run


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the checkout: a packed model written by this checkout, a batch, its logits here."""
    folder = tmp_path_factory.mktemp("outside")
    assert not folder.resolve().is_relative_to(ROOT)
    model = randomized("binary", "gsb", seed=3)
    write_program_file(model, folder / "m.bhvp", preprocess={"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 32})
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "want.npy", rt.load(folder / "m.bhvp").run(x))
    pixels = np.random.default_rng(6).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "image.png")
    return folder


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source distribution, from the build backend's own hook (what `python -m build --sdist` calls)."""
    out = tmp_path_factory.mktemp("sdist")
    hook = f"from scikit_build_core.build import build_sdist; print(build_sdist({str(out)!r}))"
    name = _run([sys.executable, "-c", hook], cwd=ROOT).stdout.strip().splitlines()[-1]
    return out / name


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the checkout with the CPU torch (the local wheel); its python."""
    folder = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", folder])
    python = folder / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "torch==2.13.0"])
    return python


def _check_installed(python: Path, outside: Path, tmp: Path) -> None:
    """The installed bhvit (not the checkout's) gives this checkout's logits, from Python, the command line
    and a C program."""
    info = json.loads(
        _run([python, "-c", CHECK, outside / "m.bhvp", outside / "x.npy", tmp / "got.npy"], cwd=tmp).stdout
    )
    site = python.parent.parent
    assert info["version"] == bhvit.__version__
    for key in ("package", "library", "include"):
        assert Path(info[key]).resolve().is_relative_to(site.resolve()), (key, info[key])
    np.testing.assert_array_equal(np.load(tmp / "got.npy"), np.load(outside / "want.npy"))
    assert _run([python.parent / "bhvit", "--version"], cwd=tmp).stdout == f"bhvit {bhvit.__version__}\n"
    predict = ["predict", outside / "image.png", "--packed", outside / "m.bhvp"]
    here = _run([Path(sys.executable).parent / "bhvit", *predict], cwd=tmp).stdout
    assert _run([python.parent / "bhvit", *predict], cwd=tmp).stdout == here and here
    # a C program against the installed header and library
    flags = _run([python, "-m", "bhvit.runtime", "--cflags", "--libs"], cwd=tmp).stdout.split()
    exe = tmp / "c_api_check"
    _run(["cc", "-std=c99", "-O2", ROOT / "tests" / "runtime" / "c_api_check.c", "-o", exe, *flags, "-lm"])
    np.load(outside / "x.npy").tofile(tmp / "x.f32")
    _run([exe, outside / "m.bhvp", tmp / "x.f32", 2, tmp / "c.f32"], cwd=tmp)
    np.testing.assert_array_equal(np.fromfile(tmp / "c.f32", np.float32).reshape(2, -1), np.load(outside / "want.npy"))


def _install(python: Path, what: Path, tmp: Path) -> None:
    """``what`` (an sdist, a wheel, a folder) in place of any bhvit, then the dependencies it declares."""
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", what], cwd=tmp)
    declared = (
        "import importlib.metadata as m; print(*(r for r in m.requires('bhvit') if 'extra ==' not in r), sep='\\n')"
    )
    _run([python, "-m", "pip", "install", "-q", *_run([python, "-c", declared], cwd=tmp).stdout.splitlines()], cwd=tmp)


def test_sdist_installs_into_a_fresh_venv_and_runs_a_packed_model(
    sdist: Path, venv: Path, outside: Path, tmp_path: Path
) -> None:
    _install(venv, sdist, tmp_path)
    _check_installed(venv, outside, tmp_path)


def test_a_failed_native_build_fails_the_install(sdist: Path, venv: Path, tmp_path: Path) -> None:
    env = _env(CC="/nonexistent/cc", CXX="/nonexistent/c++")
    run = _run([venv, "-m", "pip", "install", "--no-deps", "--force-reinstall", sdist], ok=False, cwd=tmp_path, env=env)
    assert run.returncode != 0 and "/nonexistent/cc" in run.stderr and "CMake configuration failed" in run.stderr


def test_pip_install_of_the_checkout_not_editable(venv: Path, outside: Path, tmp_path: Path) -> None:
    _install(venv, ROOT, tmp_path)
    _check_installed(venv, outside, tmp_path)


def test_release_wheel_is_stripped_repaired_and_runs(venv: Path, outside: Path, tmp_path: Path) -> None:
    """scripts/build_wheel.sh (its tools go into the fresh environment): the sdist, the wheel built from it,
    repaired by auditwheel to a manylinux tag, every library its binaries need either the system's or in it."""
    dist = tmp_path / "dist"
    run = _run(["bash", ROOT / "scripts" / "build_wheel.sh", dist], env=_env(PYTHON=str(venv)), cwd=ROOT)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"bhvit-{bhvit.__version__}-") and "-manylinux_" in wheel.name, wheel.name
    assert list(dist.glob(f"bhvit-{bhvit.__version__}.tar.gz")) and f"(tag {wheel.stem.split('-', 2)[2]})" in run.stdout
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "unzipped")
    bundled = {p.name for p in (tmp_path / "unzipped").glob("bhvit.libs/*")}
    for binary in (tmp_path / "unzipped" / "bhvit").rglob("*.so"):
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _run(["readelf", "-d", binary]).stdout)
        # each library it needs is the system's (the manylinux policy's list) or travels in the wheel
        assert all(lib in bundled or re.match(MANYLINUX_SYSTEM, lib) for lib in needed), (binary.name, needed)
    _install(venv, wheel, tmp_path)
    _check_installed(venv, outside, tmp_path)


def test_no_native_opt_out_installs_the_python_package_alone(sdist: Path, venv: Path, tmp_path: Path) -> None:
    env = _env(BHVIT_NO_NATIVE="1", CXX="/nonexistent/c++")  # no compiler is needed
    _run([venv, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", sdist], cwd=tmp_path, env=env)
    (package,) = venv.parent.parent.glob("lib/python*/site-packages/bhvit")
    assert (package / "__init__.py").is_file() and not list(package.rglob("*.so")), "a native file was installed"
    info = json.loads(_run([venv, "-c", CHECK_NO_NATIVE], cwd=tmp_path).stdout)
    assert info["version"] == bhvit.__version__ and info["available"] is False and info["extension"] is False
    message = info["message"]
    assert "not built" in message and "BHVIT_NO_NATIVE" in message and "cmake -S runtime" in message
    run = _run([venv, "-m", "bhvit.runtime", "--library"], ok=False, cwd=tmp_path)
    assert run.returncode == 1 and len(run.stderr.splitlines()) == 1 and "BHVIT_NO_NATIVE" in run.stderr
