"""onnxcomp: graph-level compression of exported ONNX models.

The native custom-op library (``kernels/native/*.cc``, built as the extension ``onnxcomp.kernels._native``) needs
onnxruntime's C/C++ API headers, which the onnxruntime wheel does not ship. The build looks for them in
``$ONNXCOMP_ORT_INCLUDE``, ``/usr/include/onnxruntime`` (Debian's libonnxruntime-dev), then a per-user cache, and
otherwise fetches Debian trixie's libonnxruntime-dev (85 KB, headers only) into that cache with apt-get's download
command on a private state directory (the system's package state is not touched). Without a compiler or the
headers the install still succeeds, without the library: onnxcomp says so in one line and runs everything in
Python and stock onnxruntime (``onnxcomp.kernels.native``).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ORT_HEADERS_DEB = "libonnxruntime-dev"
ORT_HEADERS_SUITE = "trixie"  # 1.21.0: the lite custom-op API, ORT_API_VERSION 21
HEADER = "onnxruntime_lite_custom_op.h"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxcomp" / f"onnxruntime-headers-{ORT_HEADERS_SUITE}"


def _fetch_headers(cache: Path) -> str:
    """Download and unpack libonnxruntime-dev from Debian trixie into ``cache``; '' on success, else why not."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if not (shutil.which("apt-get") and shutil.which("dpkg") and sources.exists()):
        return "no apt-get/dpkg with Debian sources on this machine"
    stanzas = [st for st in sources.read_text().split("\n\n") if "security" not in st and "URIs:" in st]
    if not stanzas:
        return f"no Debian archive in {sources}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        lines = [ln if not ln.startswith("Suites:") else f"Suites: {ORT_HEADERS_SUITE}" for ln in stanzas[0].splitlines()]
        (work / "trixie.sources").write_text("\n".join(lines) + "\n")
        opts = ["-o", f"Dir::Etc::sourcelist={work / 'trixie.sources'}", "-o", "Dir::Etc::sourceparts=/dev/null",
                "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}", "-q"]
        for step in (["update"], ["download", ORT_HEADERS_DEB]):
            run = subprocess.run(["apt-get", *opts, *step], cwd=work, capture_output=True, text=True, timeout=300)
            if run.returncode != 0 and step[0] == "download":
                return f"apt-get download {ORT_HEADERS_DEB} failed: {run.stderr.strip().splitlines()[-1:]}"
        debs = sorted(work.glob(f"{ORT_HEADERS_DEB}_*.deb"))
        if not debs:
            return f"apt-get downloaded no {ORT_HEADERS_DEB}"
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache.parent))
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True, capture_output=True)
        if cache.exists():
            shutil.rmtree(cache)
        staging.rename(cache)
    return ""


def find_ort_headers() -> tuple[str | None, str]:
    """(include directory, '') or (None, why not)."""
    candidates = [os.environ.get("ONNXCOMP_ORT_INCLUDE", ""), "/usr/include/onnxruntime",
                  str(_cache_dir() / "usr" / "include" / "onnxruntime")]
    for folder in candidates:
        if folder and os.path.exists(os.path.join(folder, HEADER)):
            return folder, ""
    if os.environ.get("ONNXCOMP_NO_FETCH"):
        return None, "onnxruntime headers not found and ONNXCOMP_NO_FETCH is set"
    try:
        why = _fetch_headers(_cache_dir())
    except (OSError, subprocess.SubprocessError) as e:
        why = f"fetching {ORT_HEADERS_DEB} failed: {e}"
    folder = candidates[-1]
    if not why and os.path.exists(os.path.join(folder, HEADER)):
        return folder, ""
    return None, why or f"{HEADER} not in the fetched package"


class BuildNative(build_ext):
    """Builds the custom-op library when a C++17 compiler and onnxruntime's headers are at hand; otherwise the
    install goes on without it (the extension is optional) and says why."""

    def build_extensions(self) -> None:
        include, why = find_ort_headers()
        if include is None:
            print(f"onnxcomp: building without the native custom-op library: {why}", file=sys.stderr)
            self.extensions = []
            return
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


NATIVE = Extension(
    "onnxcomp.kernels._native",
    sources=sorted(glob.glob("kernels/native/*.cc")),
    depends=sorted(glob.glob("kernels/native/*.h")),
    language="c++",
    # No -march: the base build runs on any x86-64; AVX2/FMA paths are compiled per function (target attributes)
    # and chosen at run time.
    extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden", "-fno-math-errno", "-Wall"],
    optional=True,
)

setup(
    name="onnxcomp",
    version="0.1.0",
    description="Framework-agnostic compression of exported ONNX models: pruning, weight sharing, quantization",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # passes/ and kernels/ live at the top of the repository but install inside the onnxcomp package.
    # Listed by hand because of the mapping; tests/test_layers.py checks that the list covers every package folder.
    packages=[
        "onnxcomp",
        "onnxcomp.ir",
        "onnxcomp.codecs",
        "onnxcomp.calibration",
        "onnxcomp.analysis",
        "onnxcomp.numerics",
        "onnxcomp.measure",
        "onnxcomp.emit",
        "onnxcomp.passes",
        "onnxcomp.kernels",
    ],
    package_dir={"onnxcomp": "onnxcomp", "onnxcomp.passes": "passes", "onnxcomp.kernels": "kernels"},
    package_data={"onnxcomp": ["recipes/*.yaml"]},
    install_requires=[
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnx-graphsurgeon>=0.5",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "protobuf>=4.25",
        "click>=8.1",
        "pyyaml>=6.0",
        "tqdm>=4.66",
    ],
    extras_require={
        # rapidocr-onnxruntime (PP-OCRv4 test models) is installed with --no-deps: its own deps pull opencv.
        "test": ["pytest>=7.4", "matplotlib>=3.7", "pillow>=10"],
        "dev": ["pytest>=7.4", "torch==2.13.0", "mlxtend>=0.23", "ruff"],
    },
    entry_points={"console_scripts": ["onnxcomp=onnxcomp.cli:main"]},
    ext_modules=[NATIVE],
    cmdclass={"build_ext": BuildNative},
)
