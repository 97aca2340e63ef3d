"""`dsrhn`: the command line of the pipeline's stages, in the order of the data.

`dsrhn <command> --help` tells each command's flags; docs/pipeline.md walks through them."""

from __future__ import annotations

import argparse
import os
import sys

from cli import (
    duplicates,
    evaluate,
    export,
    index,
    ingest,
    methods,
    photos,
    pipeline,
    queries,
    search,
    serve,
    train,
    weights,
)

COMMANDS = (
    photos,
    ingest,
    queries,
    weights,
    train,
    export,
    methods,
    evaluate,
    index,
    serve,
    search,
    duplicates,
    pipeline,
)  # each: NAME, HELP, register(subparsers), run(args)


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"    dsrhn {c.NAME:<11} {c.HELP}" for c in COMMANDS)
    ap = argparse.ArgumentParser(
        prog="dsrhn",
        description=f"{__doc__.splitlines()[0]}\n\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub).set_defaults(fn=command.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # bad flags, inputs or a diverged run: one line
        parser.exit(2, f"dsrhn {args.command}: error: {e}\n")
    except OSError as e:  # disk full, permission: one line naming the file, never a traceback
        parser.exit(1, f"dsrhn {args.command}: error: {os_error_line(args, e)}\n")
    except Exception as e:
        line = known_failure(args, e)
        if line is None:
            raise
        parser.exit(1, f"dsrhn {args.command}: error: {line}\n")


def known_failure(args, e: Exception) -> str | None:
    """One line for a failure that is the data's or the machine's, not a bug: an OS error a library or a Beam
    worker wrapped (disk full, permission), a damaged TFRecord (DataLossError); None for anything else."""
    from dsrhn.beam_options import worker_os_error

    os_error = worker_os_error(e)
    if os_error is not None:
        return os_error_line(args, os_error)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(e, tf.errors.DataLossError):
        from dsrhn.records import damaged_shard, op_error_text

        examples = getattr(args, "examples", None)
        if not examples:
            return f"damaged data ({op_error_text(e)})"
        where = damaged_shard(examples) if os.path.isdir(examples) else ""
        return f"damaged record in {where or examples}: write the Examples again with `dsrhn ingest`"
    return None


def os_error_line(args, e: OSError) -> str:
    """The file an OS error names, else the command's output, and the error's words."""
    if e.filename:
        return f"{e.filename}: {e.strerror or e}"
    out = _output_of(args)
    return f"{e.strerror or e}" + (f" (writing {out})" if out else "")


def _output_of(args) -> str:
    """Where the command writes, for an OS error that names no file (a library's write, a Beam worker's)."""
    from dsrhn.contracts import INDEX_DIR

    if getattr(args, "output", None):
        return os.path.abspath(args.output)
    if args.command == "index" and getattr(args, "model", None):
        return os.path.abspath(os.path.join(args.model, INDEX_DIR))
    return ""


if __name__ == "__main__":
    sys.exit(main())
