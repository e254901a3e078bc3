"""The ``onnxcomp`` command line: inspect, compress, eval, bench, recipes, unpack.

Every user error is one line on stderr (``onnxcomp: error: ...``) and exit code 2; no traceback, no partial
output file. An unexpected failure is one line and exit code 1 (``ONNXCOMP_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys

import click
from tqdm import tqdm

from onnxcomp import api
from onnxcomp.errors import OnnxcompError, PassError
from onnxcomp.kernels import library, schema
from onnxcomp.measure.latency import bench_feed, benchmark
from onnxcomp.measure.report import dumps_json
from onnxcomp.recipe import builtin_recipes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxcomp")
def cli() -> None:
    """Compress exported ONNX models: prune, share, quantize, and emit for your runtime."""


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the full summary as JSON.")
@click.option("--layers", default=30, show_default=True, type=click.IntRange(min=0),
              help="Layer rows to print (0: all).")
@click.option("--groups", is_flag=True, help="Show the channel groups filter pruning uses, and why groups are locked.")
@click.option("--shape", "shapes", multiple=True, help="With --groups: input shape for free dims, e.g. x=1x3x224x224.")
def inspect(model: str, as_json: bool, layers: int, groups: bool, shapes: tuple[str, ...]) -> None:
    """Op histogram, size by section, parameters and bytes per layer (or, with --groups, channel groups)."""
    if groups:
        try:
            rows = api.channel_groups(model, _parse_shapes(shapes) or None)
        except PassError as e:
            raise PassError(f"{e} (on the command line: --shape NAME=1x3x224x224)") from None
        _print_groups(rows, as_json)
        return
    info = api.inspect(model)
    if as_json:
        click.echo(dumps_json(info), nl=False)
        return
    click.echo(f"{info['path']}: IR {info['ir_version']}, opsets {info['opsets']}, producer '{info['producer']}'")
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            click.echo(f"  {kind[:-1]} {v['name']}: {v['dtype']} {v['shape']}")
    click.echo("ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    click.echo("size: " + ", ".join(f"{k} {v:,} B" for k, v in info["size"].items()))
    click.echo(f"parameters: {info['parameters']:,} (in layer kernels: {info['layer_parameters']:,})")
    rows = [r for r in info["layers"] if r["role"] == "weight"]
    shown = rows if layers == 0 else rows[:layers]
    click.echo(f"{'layer':<40} {'op':<14} {'shape':<18} {'params':>10} {'bytes':>11} {'sparsity':>8}")
    for r in shown:
        shape = "x".join(map(str, r["shape"]))
        click.echo(f"{r['layer'][:40]:<40} {r['op']:<14} {shape:<18} {r['params']:>10,} {r['bytes']:>11,} "
                   f"{r['sparsity'] * 100:>7.1f}%")
    if len(shown) < len(rows):
        click.echo(f"... {len(rows) - len(shown)} more (--layers 0 or --json)")


def _print_groups(rows: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(dumps_json(rows), nl=False)
        return
    free = [r for r in rows if r["locked"] is None]
    click.echo(f"{len(rows)} channel groups, {len(free)} prunable ({sum(r['channels'] for r in free):,} channels)")
    for r in rows:
        state = "prunable" if r["locked"] is None else f"locked: {r['locked']}"
        click.echo(f"group {r['group']}: {r['channels']} channels, {state}")
        click.echo(f"  members: {', '.join(r['members']) or '-'}")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output .onnx path (must differ from MODEL).")
@click.option("--recipe", default="cleanup", show_default=True,
              help="Built-in recipe name or YAML file; chain with +, e.g. slim+int8.")
@click.option("--calib", "calib", default=None, help="Calibration data: .npz, or a folder of .npz feeds.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0, max=2**32 - 1),
              help="Seed for every random choice.")
@click.option("--allow-constant-calib", is_flag=True,
              help="Accept calibration data that is constant throughout (e.g. all zeros); the report notes it.")
@click.option("--quiet", is_flag=True, help="Print no report (it is still written beside the output).")
def compress(model: str, output: str, recipe: str, calib: str | None, seed: int, allow_constant_calib: bool,
             quiet: bool) -> None:
    """Run a recipe on MODEL and write OUT, OUT.report.json and OUT.report.md."""
    bar = tqdm(total=None, desc="compress", unit="pass", disable=None, file=sys.stderr, leave=False)

    def on_step(i: int, p) -> None:
        bar.set_description(f"pass {i + 1}: {p.name}")
        bar.update(1)

    try:
        result = api.compress(model, recipe=recipe, calibration=calib, output=output, seed=seed, on_step=on_step,
                              progress=True, allow_constant_calibration=allow_constant_calib)
    finally:
        bar.close()
    if not quiet:
        click.echo(result.report.to_text())
    click.echo(f"wrote {output} ({result.report.size_after['total']:,} B, {result.report.ratio:.2f}x) "
               f"and {output}.report.md/.json")


@cli.command(name="eval")
@click.argument("reference")
@click.argument("candidate")
@click.option("--data", required=True, help="Feeds (.npz or folder); a 'labels' array adds accuracy.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--allow-constant-calib", is_flag=True, help="Accept data that is constant throughout (e.g. all zeros).")
def eval_(reference: str, candidate: str, data: str, as_json: bool, allow_constant_calib: bool) -> None:
    """Fidelity of CANDIDATE against REFERENCE (and accuracy when DATA has labels)."""
    report = api.evaluate(reference, candidate, data, allow_constant=allow_constant_calib)
    if as_json:
        click.echo(dumps_json(report.to_dict()), nl=False)
    else:
        click.echo(f"{report.samples} samples")
        for line in report.lines():
            click.echo(line)


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--data", default=None, help="Take the input from the first sample of this .npz.")
@click.option("--shape", "shapes", multiple=True, help="Input shape for free dims, e.g. input=1x3x224x224.")
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="onnxruntime intra-op threads (0: default).")
def bench(models: tuple[str, ...], data: str | None, shapes: tuple[str, ...], rounds: int, warmup: int,
          threads: int) -> None:
    """onnxruntime latency medians, runs interleaved, with speed-up against the first MODEL."""
    feed = bench_feed(models[0], data, _parse_shapes(shapes))
    loaded = [api.load(path) for path in models]  # a missing or broken model fails here, not mid-benchmark
    missing = library.absent_reason()
    if missing and any(n.domain == schema.DOMAIN and n.op in schema.COMPUTE_OPS for m in loaded
                       for g in m.graphs() for n in g.nodes):
        click.echo(f"note: compute ops run their dense ONNX functions: {missing}", err=True)
    with tqdm(total=rounds, desc="bench", disable=None, file=sys.stderr, leave=False) as bar:
        rows = benchmark(list(models), feed, rounds, warmup, threads, progress=lambda _: bar.update(1))
    click.echo(f"{'model':<50} {'median ms':>10} {'p10':>9} {'p90':>9} {'speed-up':>9}")
    for r in rows:
        click.echo(f"{r.model[-50:]:<50} {r.median_ms:>10.3f} {r.p10_ms:>9.3f} {r.p90_ms:>9.3f} {r.speedup:>8.2f}x")


@cli.command()
def recipes() -> None:
    """List the built-in recipes."""
    for name, description in builtin_recipes().items():
        click.echo(f"{name:<20} {description}")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, help="Output .onnx path (must differ from MODEL).")
def unpack(model: str, output: str) -> None:
    """Decode packed weights (ai.onnxcomp.DecodeWeight) into float initializers: plain ONNX for any runtime."""
    from onnxcomp.ir.model import Model, save_proto
    from onnxcomp.runtime import unpack as unpack_model

    source = Model.load(model)
    path = save_proto(unpack_model(source), output, protect=source.source_files)
    click.echo(f"wrote {path} ({path.stat().st_size:,} B)")

def _parse_shapes(items: tuple[str, ...]) -> dict[str, list[int]]:
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().split("x")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"--shape {item!r}: expected NAME=D1xD2x..., e.g. input=1x3x224x224") from None
    return shapes


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        cli.main(args=args or ["--help"], prog_name="onnxcomp", standalone_mode=False)
    except OnnxcompError as e:
        _fail(str(e), 2)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as e:
        _fail(e.format_message(), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("ONNXCOMP_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (set ONNXCOMP_DEBUG=1 for the traceback)", 1)
    sys.exit(0)


_MAX_MESSAGE = 600  # characters of one error line: a message quoting a corrupt file's bytes is cut, not printed whole


def _fail(message: str, code: int) -> None:
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else "?"
                   for c in " ".join(message.split()))
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE - 3] + "..."
    click.echo(f"onnxcomp: error: {text}", err=True)
    sys.exit(code)
