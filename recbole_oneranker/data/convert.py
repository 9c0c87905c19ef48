"""Command line of the raw-data converters: ``python -m recbole_oneranker.data.convert <converter> [options]``.

Examples::

    python -m recbole_oneranker.data.convert --list
    python -m recbole_oneranker.data.convert taobao-userbehavior            # -> dataset/taobao/taobao.inter
    python -m recbole_oneranker.data.convert obd --policy bts --campaign men --out dataset

``--src`` defaults to the converter's folder of the shared raw data (:func:`recbole_oneranker.data.paths.
raw_dataset_dir`), ``--out`` to ``dataset`` (RecBole's default ``data_path``), ``--name`` to the converter's
default dataset name. Malformed input prints one line ``error: <message>`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recbole_oneranker.data.converters import CONVERTERS, ConversionError, convert_dataset


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: ``--list``, or one sub-command per converter with its own options."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_oneranker.data.convert",
        description="Convert raw public data sets into RecBole atomic files.",
    )
    parser.add_argument("--list", action="store_true", help="list the converters and exit")
    commands = parser.add_subparsers(dest="converter", metavar="converter")
    for spec in CONVERTERS.values():
        command = commands.add_parser(spec.name, help=spec.description, description=spec.description)
        command.add_argument("--src", help=f"raw data folder (default: the shared {spec.folder}/)")
        command.add_argument("--out", default="dataset", help="output data_path (default: dataset)")
        command.add_argument("--name", help="dataset name (default: the converter's)")
        command.add_argument("--quiet", action="store_true", help="no progress messages")
        for option in spec.options:
            command.add_argument(f"--{option.name}", default=option.default, choices=option.choices, help=option.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        width = max(len(name) for name in CONVERTERS)
        for spec in CONVERTERS.values():
            print(f"{spec.name:<{width}}  {spec.description}")
        return 0
    if args.converter is None:
        parser.print_usage(sys.stderr)
        print("error: name a converter (see --list)", file=sys.stderr)
        return 2
    options = {option.name: getattr(args, option.name) for option in CONVERTERS[args.converter].options}
    try:
        summary = convert_dataset(
            args.converter, src=args.src, out=args.out, name=args.name, progress=not args.quiet, **options
        )
    except ConversionError as exc:
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
