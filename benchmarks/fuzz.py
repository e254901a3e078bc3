"""Seeded fuzzing of onnxcomp's readers: byte flips and truncations of models and packed weights.

    python benchmarks/fuzz.py [--cases 2000] [--seed 0] [--memory-gb 2] [--keep FOLDER]

Each case mutates one input (a bundled model, or a packed model written by ``pack_weights``: its DecodeWeight
blobs flipped or cut inside the ONNX file, and bare blobs through ``kernels.reference.decode_weight``) and runs one
entry point on it in a forked child with its address space capped: ``onnxcomp inspect``, ``compress --recipe
cleanup``, ``unpack`` (the CLI, in process), ``onnxcomp.runtime.InferenceSession`` and ``decode_weight`` (the API).
A case passes when the CLI exits 0, or 2 with one line on stderr, and the API returns or raises an
``OnnxcompError``; it fails on exit 1 (an internal error), a traceback, a signal (a crash, or the memory cap
reached: MemoryError and SIGKILL/SIGSEGV count as failures), more than one line, or a file left in the output
folder by a failed run. Prints a table of outcomes per entry point and the failing cases (with ``--keep``, their
inputs are copied there). ``tests/test_fuzz.py`` runs a bounded number of cases of the same harness.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pathlib
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENTRY_POINTS = ("inspect", "cleanup", "unpack", "session", "decode")


@dataclass
class Outcome:
    case: str
    entry: str
    status: str  # "ok" (exit 0), "refused" (one-line user error), or a failure kind
    detail: str

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "refused")


def corpus(folder: pathlib.Path) -> dict[str, bytes]:
    """The inputs mutations start from: the bundled models and a packed one (``pack_weights`` output)."""
    from models import paths
    from onnxcomp.api import compress

    seeds = {}
    for name in (*sorted(paths.TRAINED), "torch_patterns"):
        seeds[name] = paths.model_path(name).read_bytes()
    packed = folder / "packed.onnx"
    recipe = {"passes": [{"prune_magnitude": {"mode": "layer", "sparsity": 0.8, "compensate": False}},
                         {"share_weights": {"bits": 4, "refine": False}},
                         {"pack_weights": {"format": "packed", "min_elements": 64}}]}
    compress(str(paths.model_path("digits_concat")), recipe=recipe, output=str(packed), seed=0)
    seeds["digits_packed"] = packed.read_bytes()
    return seeds


def blobs(packed: bytes) -> list[bytes]:
    """The DecodeWeight blobs of a packed model."""
    import onnx

    model = onnx.load_from_string(packed)
    names = {n.input[0] for n in model.graph.node if n.op_type == "DecodeWeight"}
    return [t.raw_data for t in model.graph.initializer if t.name in names]


def mutate(data: bytes, rng: np.random.Generator, spans: list[tuple[int, int]] | None = None) -> tuple[bytes, str]:
    """A truncation or 1-8 byte flips, inside ``spans`` (byte ranges of interest) when given."""
    buf = bytearray(data)
    if rng.random() < 0.25:
        cut = int(rng.integers(0, len(buf)))
        return bytes(buf[:cut]), f"truncated at {cut}"
    flips = []
    for _ in range(int(rng.integers(1, 9))):
        lo, hi = spans[int(rng.integers(len(spans)))] if spans else (0, len(buf))
        at = int(rng.integers(lo, max(hi, lo + 1)))
        if at < len(buf):
            buf[at] = int(rng.integers(0, 256))
            flips.append(at)
    return bytes(buf), f"bytes {flips} changed"


def with_crc(blob: bytes) -> bytes:
    """The blob with its CRC-32 (header bytes 12-15, over bytes 16 on) made valid again: hostile data need not be
    random, and a valid CRC takes a mutation past the checksum into the parser (kernels/FORMAT.md)."""
    if len(blob) < 16:
        return blob
    return blob[:12] + zlib.crc32(blob[16:]).to_bytes(4, "little") + blob[16:]


def mutate_blob(blob: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Flips aimed at the header and meta (the first 64 bytes) as often as anywhere; the CRC fixed half the time."""
    data, how = mutate(blob, rng, [(0, min(len(blob), 64)), (0, len(blob))])
    if rng.random() < 0.5:
        return with_crc(data), how + ", CRC fixed"
    return data, how


def mutate_packed_model(packed: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A packed model whose one DecodeWeight blob is mutated (the ONNX around it stays valid)."""
    import onnx

    model = onnx.load_from_string(packed)
    names = [n.input[0] for n in model.graph.node if n.op_type == "DecodeWeight"]
    tensors = [t for t in model.graph.initializer if t.name in names]
    t = tensors[int(rng.integers(len(tensors)))]
    data, how = mutate_blob(t.raw_data, rng)
    t.raw_data = data
    t.dims[:] = [len(data)]
    return model.SerializeToString(), f"blob {t.name!r} {how}"


def _child(entry: str, path: pathlib.Path, out: pathlib.Path, memory: int, stderr_fd: int) -> None:
    """Runs in the forked child: never returns."""
    os.dup2(stderr_fd, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    # Python-level streams too: under pytest sys.stderr is a capture object, not file descriptor 2
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    code = 1
    try:
        if entry in ("inspect", "cleanup", "unpack"):
            from onnxcomp.cli import main

            argv = {"inspect": ["inspect", str(path)],
                    "cleanup": ["compress", str(path), "-o", str(out), "--recipe", "cleanup", "--quiet"],
                    "unpack": ["unpack", str(path), "-o", str(out)]}[entry]
            try:
                main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        else:
            from onnxcomp.errors import OnnxcompError

            try:
                if entry == "session":
                    from onnxcomp.runtime import InferenceSession

                    InferenceSession(str(path))
                else:
                    from onnxcomp.kernels.reference import decode_weight

                    decode_weight(np.frombuffer(path.read_bytes(), np.uint8))
                code = 0
            except OnnxcompError as e:
                sys.stderr.write(f"onnxcomp: error: {e}\n")
                code = 2
    except MemoryError:
        sys.stderr.write("MemoryError\n")
        code = 3
    except BaseException:  # noqa: BLE001 - a failure to report, whatever it is
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


def run_case(entry: str, data: bytes, case: str, work: pathlib.Path, memory: int, timeout: float = 300.0) -> Outcome:
    """One mutated input through one entry point, in a forked child with ``memory`` bytes of address space."""
    folder = pathlib.Path(tempfile.mkdtemp(dir=work))
    path = folder / ("input.blob" if entry == "decode" else "input.onnx")
    path.write_bytes(data)
    out = folder / "out" / "result.onnx"
    out.parent.mkdir()
    err = folder / "stderr.txt"
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    pid = os.fork()
    if pid == 0:
        _child(entry, path, out, memory, fd)
    os.close(fd)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            shutil.rmtree(folder, ignore_errors=True)
            return Outcome(case, entry, "timeout", f"over {timeout:.0f} s")
        time.sleep(0.005)
    text = err.read_text(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    left = sorted(p.name for p in out.parent.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    if os.WIFSIGNALED(status):
        return Outcome(case, entry, f"signal {signal.Signals(os.WTERMSIG(status)).name}", text[-300:])
    code = os.WEXITSTATUS(status)
    if code == 0:
        return Outcome(case, entry, "ok", "")
    if code == 2 and len(lines) == 1 and lines[0].startswith("onnxcomp: error: ") and "Traceback" not in text:
        if left:
            return Outcome(case, entry, "left files", f"{left} after: {lines[0]}")
        return Outcome(case, entry, "refused", lines[0])
    kind = {1: "exit 1", 3: "MemoryError"}.get(code, f"exit {code}")
    if code == 2:
        kind = "not one line"
    return Outcome(case, entry, kind, text[-600:])


def cases(seeds: dict[str, bytes], count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``count`` seeded (entry point, case name, mutated bytes) triples over the corpus."""
    rng = np.random.default_rng(seed)
    names = sorted(seeds)
    packed = seeds["digits_packed"]
    raw_blobs = blobs(packed)
    out = []
    for i in range(count):
        entry = ENTRY_POINTS[i % len(ENTRY_POINTS)]
        if entry == "decode":
            k = int(rng.integers(len(raw_blobs)))
            data, how = mutate_blob(raw_blobs[k], rng)
            out.append((entry, f"{i}: blob {k}, {how}", data))
            continue
        name = "digits_packed" if rng.random() < 0.4 else names[int(rng.integers(len(names)))]
        if name == "digits_packed" and rng.random() < 0.7:
            data, how = mutate_packed_model(packed, rng)
        else:
            data, how = mutate(seeds[name], rng)
        out.append((entry, f"{i}: {name}, {how}", data))
    return out


def fuzz(count: int, seed: int, memory: int, keep: pathlib.Path | None = None,
         log: io.TextIOBase | None = None) -> list[Outcome]:
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        seeds = corpus(work)
        results = []
        for entry, case, data in cases(seeds, count, seed):
            outcome = run_case(entry, data, case, work, memory)
            results.append(outcome)
            if outcome.failed and keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"case{case.split(':')[0]}_{entry}.bin").write_bytes(data)
            if log is not None and outcome.failed:
                print(f"FAIL {entry} {case}: {outcome.status}: {outcome.detail[:300]}", file=log, flush=True)
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-gb", type=float, default=2.0)
    ap.add_argument("--keep", type=pathlib.Path, default=None, help="copy failing inputs here")
    args = ap.parse_args()
    start = time.perf_counter()
    results = fuzz(args.cases, args.seed, int(args.memory_gb * (1 << 30)), args.keep, sys.stdout)
    table = collections.Counter((r.entry, r.status) for r in results)
    print(f"\n{len(results)} cases, seed {args.seed}, memory cap {args.memory_gb:g} GB, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'entry':<10} {'ok':>6} {'refused':>8} {'failed':>7}")
    for entry in ENTRY_POINTS:
        ok, refused = table[(entry, "ok")], table[(entry, "refused")]
        failed = sum(v for (e, s), v in table.items() if e == entry and s not in ("ok", "refused"))
        print(f"{entry:<10} {ok:>6} {refused:>8} {failed:>7}")
    failures = collections.Counter(r.status for r in results if r.failed)
    print("failures: " + (", ".join(f"{k} {v}" for k, v in failures.items()) or "none"))


if __name__ == "__main__":
    main()
