"""The ``lkstn`` command (also ``python -m lkstn``).

``lkstn align TEMPLATE IMAGE``
    Align a template image file to an image file with an LK-family method; writes the
    parameters (JSON) and an overlay PNG.
``lkstn track TEMPLATE FRAME...``
    Follow a template through a sequence of image files; writes a CSV and a JSON of pixel
    matrices and scores and an overlay per frame (or a GIF).
``lkstn reproduce planar|equivalence|mnist|gtsrb|boundary [--quick]``
    Run one of the paper's experiments (each module in :mod:`lkstn.experiments` adds its
    own options through ``add_arguments(parser)`` and runs through ``run(args)``).

Exit codes: 0 success (for ``align``: the alignment converged), 1 the alignment ran but did not
converge (for ``track``: some frame was lost; results are still written), 2 bad arguments or
unreadable input, 3 an internal error.
Errors are one line on stderr; ``lkstn --debug ...`` shows the traceback of an internal error.
Bad arguments (argparse's own errors included) and the data loaders' errors (a missing or
malformed dataset file, :mod:`lkstn.data.errors`) are input errors: one line naming the argument
or the file, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lkstn.cli import align, track
from lkstn.data.errors import CorruptDataError, DatasetNotFoundError
from lkstn.errors import UsageError

__all__ = ["UsageError", "main"]

EXPERIMENTS = ("planar", "equivalence", "mnist", "gtsrb", "boundary")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    return int(args.run(args) or 0)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``lkstn reproduce mnist: error: argument
    --threads: ...``) and exit code 2, rather than the usage text followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``lkstn`` command.

    Only the experiment named in ``argv`` (if any) is imported, so ``lkstn --help`` and
    ``lkstn align`` stay fast.
    """
    from lkstn import __version__

    parser = _Parser(prog="lkstn", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"lkstn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("align", help="align a template image to an image (LK family)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    align.add_arguments(a)
    a.set_defaults(func=align.run)

    t = sub.add_parser("track", help="follow a template through a sequence of image files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    track.add_arguments(t)
    t.set_defaults(func=track.run)

    r = sub.add_parser("reproduce", help="reproduce a table or figure of the paper")
    rsub = r.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    wanted = set(EXPERIMENTS) if argv is None else {a for a in argv if a in EXPERIMENTS}
    for name in EXPERIMENTS:
        if name not in wanted:  # importing an experiment imports torch: only the one asked for
            rsub.add_parser(name, help=f"[LL17] {name} experiment (see its --help)")
            continue
        module = importlib.import_module(f"lkstn.experiments.{name}")
        e = rsub.add_parser(
            name,
            help=(module.__doc__ or name).strip().split("\n")[0],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(e)
        e.set_defaults(func=_cmd_reproduce, run=module.run)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0, 1, 2 or 3; see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version (0), a bad argument (2, one line printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, CorruptDataError, DatasetNotFoundError) as exc:
        if args.debug:
            raise
        print(f"lkstn: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lkstn: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if args.debug:
            raise
        print("lkstn: error: out of memory", file=sys.stderr)
        return 3
    except Exception as exc:  # the last line of defence: one line, exit 3
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"lkstn: internal error: {type(exc).__name__}: {msg} (--debug shows the traceback)",
              file=sys.stderr)  # fmt: skip
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
