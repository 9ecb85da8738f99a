"""Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test images, 28×28 grey, 10 classes.

Where the files are looked for, in this order (the first directory holding all four IDX files wins;
``.gz`` or uncompressed):

1. the directory the user names (``--data PATH`` / ``DataConfig.root``), if any;
2. ``/usr/share/datasets/fashion-mnist``, where the Debian package ``dataset-fashion-mnist`` installs them;
3. the cache directory ``$BHVIT_DATA_DIR/fashion-mnist`` (default ``~/.cache/bhvit/datasets/fashion-mnist``);
4. the public source (:data:`URLS`), downloaded into the cache directory when ``download`` is true and
   the machine is online.

Without network access, ``python -m bhvit.data.fashion_mnist --download-debian DIR`` fetches the Debian
package with ``apt-get download`` and unpacks the four files into ``DIR`` (default: the cache directory).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import torch

from bhvit.data.download import DatasetNotFoundError, cache_dir, download_file

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MEAN, STD = (0.2860,), (0.3530,)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (optionally gzipped): magic ``00 00 <dtype> <ndim>``, big-endian int32 dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = _IDX_DTYPES[dtype_code]
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=dtype)
    if dtype.itemsize > 1:  # IDX is big-endian
        data = data.view(torch.uint8).view(-1, dtype.itemsize).flip(-1).contiguous().view(dtype).flatten()
    return data.reshape(dims).clone()


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_find_file(directory, stem) is not None for stem in FILES.values())


def candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    """The directories searched, in order (see the module docstring)."""
    dirs = [Path(root)] if root else []
    if root:
        dirs.append(Path(root) / "fashion-mnist")
    return [*dirs, DEBIAN_DIR, cache_dir("fashion-mnist")]


def locate(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Return the first directory holding the four IDX files, downloading into the cache if allowed."""
    tried = candidate_dirs(root)
    for d in tried:
        if _complete(d):
            return d
    target = cache_dir("fashion-mnist")
    errors: list[str] = []
    if download:
        for base in URLS:
            try:
                for stem in FILES.values():
                    if _find_file(target, stem) is None:
                        download_file(base + stem + ".gz", target / (stem + ".gz"))
                return target
            except OSError as e:
                errors.append(f"{base}: {e}")
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked in: "
        + ", ".join(str(d) for d in tried)
        + (". Download failed: " + "; ".join(errors) if errors else " (download disabled)")
        + ".\nTo get it: (a) `python -m bhvit.data.fashion_mnist --download-debian "
        + f"{target}` (uses `apt-get download dataset-fashion-mnist`; run `apt-get update` first if apt "
        + "has no package lists), (b) `sudo apt-get install dataset-fashion-mnist`, or (c) on a machine "
        + f"that is online, pass --download (files from {URLS[0]}) or copy the four "
        + "*-ubyte.gz files into a directory and pass it with --data DIR."
    )


def local_dir(directory: str | os.PathLike) -> Path | None:
    """``directory`` or its ``fashion-mnist`` subfolder when it holds the four files, else None (for
    ``--data DIR``: that directory only, never the other places :func:`locate` searches)."""
    return next((d for d in (Path(directory), Path(directory) / "fashion-mnist") if _complete(d)), None)


def load(root: str | os.PathLike | None = None, download: bool = False) -> dict[str, torch.Tensor]:
    """Load the four arrays from where :func:`locate` finds them (:func:`read_dir`)."""
    return read_dir(locate(root, download))


def read_dir(d: Path) -> dict[str, torch.Tensor]:
    """The four arrays of directory ``d``: ``train_images`` (60000, 28, 28) uint8, ``train_labels``
    (60000,) int64, …"""
    out = {}
    for key, stem in FILES.items():
        path = _find_file(d, stem)
        if path is None:
            raise DatasetNotFoundError(f"{d}: {stem} (or {stem}.gz) is missing; Fashion-MNIST needs the four files")
        t = read_idx(path)
        out[key] = t.long() if key.endswith("labels") else t
    return out


def download_debian(dest: str | os.PathLike) -> Path:
    """``apt-get download dataset-fashion-mnist``, unpack it and copy the four IDX files into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True)
        src = Path(tmp) / "root" / DEBIAN_DIR.relative_to("/")
        for stem in FILES.values():
            shutil.copy2(src / (stem + ".gz"), dest / (stem + ".gz"))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bhvit.data.fashion_mnist",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--download-debian",
        nargs="?",
        const=str(cache_dir("fashion-mnist")),
        metavar="DIR",
        help="fetch the Debian package with apt-get download and unpack the files into DIR",
    )
    g.add_argument("--locate", nargs="?", const="", metavar="DIR", help="print where the files are found")
    args = p.parse_args(argv)
    if args.download_debian is not None:
        print(download_debian(args.download_debian))
    else:
        print(locate(args.locate or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
