"""Fuzzing of the native blob decoder (``kernels/native/blob_decoder.cc``) under AddressSanitizer and UBSan.

    python benchmarks/fuzz_native.py [--seconds 60] [--workdir build/fuzz] [--jobs 1] [--driver auto|libfuzzer|loop]

Builds ``kernels/native/fuzz/decode_fuzzer.cc`` with the standalone decoder (no onnxruntime) and runs it for
``--seconds``, seeded with the golden blobs of ``kernels/testdata``; every input is decoded as it is and again
with its CRC recomputed, so mutations get past the checksum into the meta, section, Huffman and decoding code.
With clang (``apt-get install clang``) it is a libFuzzer target (``-fsanitize=fuzzer,address,undefined``, the
corpus kept in ``WORKDIR/corpus`` between runs); with only g++ it falls back to the target's own seeded mutation
loop under ``-fsanitize=address,undefined`` (no coverage guidance) and says so. The fuzzer runs under
``nice -n 19``. Prints the executions, the time and any crash (its input is kept in ``WORKDIR``); exits 1 on a
crash, 0 otherwise, and 0 with a one-line message when no sanitizer toolchain is present.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "kernels" / "native"
SOURCES = [NATIVE / "blob_decoder.cc", NATIVE / "fuzz" / "decode_fuzzer.cc"]
SEEDS = ROOT / "kernels" / "testdata"
FLAGS = ["-std=c++17", "-g", "-O1", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]


FUZZ_PROBE = ('#include <cstdint>\n#include <cstddef>\n'
              'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n')


def _compiles(cmd: list[str], source: str) -> bool:
    """Whether ``cmd`` compiles and links ``source`` (the sanitizer runtimes are separate packages)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cc"
        src.write_text(source)
        return subprocess.run([*cmd, str(src), "-o", str(Path(tmp) / "probe")], capture_output=True).returncode == 0


def toolchain(driver: str) -> tuple[str, list[str]] | None:
    """(driver, compile command) for the best sanitizer toolchain here, or None."""
    if driver in ("auto", "libfuzzer"):
        for cxx in ("clang++", "clang++-16", "clang++-15", "clang++-14"):
            if shutil.which(cxx):
                cmd = [cxx, *FLAGS, "-fsanitize=fuzzer,address,undefined"]
                if _compiles(cmd, FUZZ_PROBE):
                    return "libfuzzer", cmd
    if driver in ("auto", "loop"):
        for cxx in ("clang++", "g++"):
            cmd = [cxx, *FLAGS, "-fsanitize=address,undefined", "-DONNXCOMP_FUZZ_DRIVER"]
            if shutil.which(cxx) and _compiles(cmd, "int main() { return 0; }\n"):  # the loop driver has a main
                return "loop", cmd
    return None


def _artifacts(work: Path) -> set[Path]:
    """libFuzzer's reproducer files (crash-, leak-, oom-, timeout-<sha1>)."""
    return {p for kind in ("crash", "leak", "oom", "timeout") for p in work.glob(f"{kind}-*")}


def build(cmd: list[str], out: Path) -> None:
    newest = max(p.stat().st_mtime for p in [*SOURCES, NATIVE / "blob_decoder.h"])
    stamp = out.with_suffix(".cmd")
    if out.exists() and out.stat().st_mtime >= newest and stamp.exists() and stamp.read_text() == " ".join(cmd):
        return
    run = subprocess.run(["nice", "-n", "19", *cmd, *map(str, SOURCES), "-o", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"fuzz_native: building the fuzz target failed:\n{run.stderr}")
    stamp.write_text(" ".join(cmd))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--jobs", type=int, default=1, help="libFuzzer worker processes (-fork)")
    parser.add_argument("--driver", choices=("auto", "libfuzzer", "loop"), default="auto")
    args = parser.parse_args()
    found = toolchain(args.driver)
    if found is None:
        print("fuzz_native: skipped: no clang++ or g++ with AddressSanitizer/UBSan here (apt-get install clang)")
        return 0
    driver, cmd = found
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    binary = work / f"decode_fuzzer_{driver}"
    build(cmd, binary)
    seeds = sorted(SEEDS.glob("*.blob"))
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:allocator_may_return_null=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    start = time.perf_counter()
    if driver == "libfuzzer":
        corpus, seed_dir = work / "corpus", work / "seeds"
        corpus.mkdir(exist_ok=True)
        seed_dir.mkdir(exist_ok=True)
        for s in seeds:
            shutil.copyfile(s, seed_dir / s.name)
        run_cmd = [str(binary), f"-max_total_time={max(1, int(args.seconds))}", "-print_final_stats=1",
                   "-rss_limit_mb=2048", "-max_len=8192", "-timeout=20", f"-artifact_prefix={work}/"]
        if args.jobs > 1:
            run_cmd.append(f"-fork={args.jobs}")
        run_cmd += [str(corpus), str(seed_dir)]
    else:
        print("fuzz_native: no libFuzzer (clang): AddressSanitizer/UBSan with the target's own mutation loop, "
              "no coverage guidance")
        run_cmd = [str(binary), str(args.seconds), *map(str, seeds)]
    before = _artifacts(work)
    run = subprocess.run(["nice", "-n", "19", *run_cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    log = run.stdout + run.stderr
    (work / f"last_run_{driver}.log").write_text(log)
    execs = sum(int(x) for x in re.findall(r"stat::number_of_executed_units:\s*(\d+)", log))
    if not execs:  # -fork mode prints progress lines instead
        found_execs = re.findall(r"#(\d+)\s", log)
        execs = int(found_execs[-1]) if found_execs else 0
    new = sorted(_artifacts(work) - before)
    crashed = run.returncode != 0 or bool(new)
    print(f"fuzz_native: {driver}, {execs:,} executions in {seconds:.0f} s ({execs / max(seconds, 1e-9):,.0f}/s), "
          f"{'CRASH' if crashed else 'no crash'}")
    if crashed:
        tail = "\n".join(log.strip().splitlines()[-40:])
        print(f"fuzz_native: exit code {run.returncode}; inputs: {', '.join(map(str, new)) or 'none'}\n{tail}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
