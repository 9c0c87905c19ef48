"""Converters from raw public data formats to RecBole atomic files (``.inter``/``.user``/``.item``).

One module per source; :data:`CONVERTERS` maps each command-line name to its :class:`ConverterSpec`, and
:func:`convert_dataset` runs one and writes ``<out>/<name>/<name>.<suffix>`` all-or-nothing. The command line is
``python -m recbole_oneranker.data.convert`` (:mod:`recbole_oneranker.data.convert`); ``docs/datasets.md`` lists
every converter's source format, output columns and choices.
"""

from __future__ import annotations

from pathlib import Path

from recbole_oneranker.data.converters import ali_ccp, amazon, movielens, obd, taobao_ad, taobao_userbehavior
from recbole_oneranker.data.converters.base import ConversionError, Converted, ConverterSpec, Option, Progress, Table
from recbole_oneranker.data.converters.writer import Summary, write_atomic
from recbole_oneranker.data.paths import raw_dataset_dir

_SPECS = (
    ConverterSpec(
        "movielens",
        "MovieLens ML-1M (*.dat) or ML-100K (u.*) in GroupLens formats: ratings, users, movies",
        "ml-1m-partial",
        movielens.convert,
    ),
    ConverterSpec(
        "amazon-s3rec",
        "Amazon 5-core sequences of the S3-Rec release + item attributes (ordinal timestamps)",
        "amazon-s3rec",
        amazon.convert,
        amazon.OPTIONS,
    ),
    ConverterSpec(
        "taobao-userbehavior",
        "Taobao UserBehavior pv/fav/cart/buy log as a cumulative cascade (value = stage level)",
        "taobao-userbehavior-subset",
        taobao_userbehavior.convert,
        taobao_userbehavior.OPTIONS,
    ),
    ConverterSpec(
        "obd",
        "Open Bandit Dataset impressions: click, slot position, propensity (pseudo user ids)",
        "obd-small",
        obd.convert,
        obd.OPTIONS,
    ),
    ConverterSpec(
        "ali-ccp",
        "Ali-CCP impression -> click -> conversion from torch-rechub CSVs (ordinal timestamps)",
        "ali-ccp-sample",
        ali_ccp.convert,
        ali_ccp.OPTIONS,
    ),
    ConverterSpec(
        "taobao-ad",
        "Taobao display-ad clicks with ad price, ad hierarchy and user profile (FuxiCTR CSVs)",
        "taobao-ad-sample",
        taobao_ad.convert,
        taobao_ad.OPTIONS,
    ),
)
CONVERTERS: dict[str, ConverterSpec] = {spec.name: spec for spec in _SPECS}


def convert_dataset(
    converter: str,
    src: str | Path | None = None,
    out: str | Path = "dataset",
    name: str | None = None,
    progress: bool = False,
    **options: str,
) -> Summary:
    """Run converter ``converter`` on ``src`` (default: its shared raw folder) and write ``<out>/<name>/``.

    ``options`` are the converter's own options (e.g. ``category="Beauty"``); missing ones take their defaults.
    Raises :class:`ConversionError` for missing or malformed input; nothing is written then.
    """
    spec = CONVERTERS.get(converter)
    if spec is None:
        raise ConversionError(f"unknown converter {converter!r} (known: {', '.join(CONVERTERS)})")
    values = _resolve_options(spec, options)
    source = Path(src) if src is not None else raw_dataset_dir(spec.folder)
    if not source.is_dir():
        raise ConversionError(f"{source}: source folder not found")
    reporter = Progress(progress)
    converted = spec.convert(source, values, reporter)
    dataset_name = name or converted.default_name
    if not dataset_name or dataset_name in (".", "..") or "/" in dataset_name or "\\" in dataset_name:
        raise ConversionError(f"invalid dataset name {dataset_name!r}")
    return write_atomic(converted, Path(out), dataset_name, reporter)


def _resolve_options(spec: ConverterSpec, options: dict[str, str]) -> dict[str, str]:
    """The converter's options with defaults filled in; unknown names or values outside the choices -> error."""
    known = {option.name: option for option in spec.options}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConversionError(f"{spec.name}: unknown option(s) {', '.join(unknown)}")
    values = {name: options.get(name, option.default) for name, option in known.items()}
    for name, value in values.items():
        choices = known[name].choices
        if choices is not None and value not in choices:
            raise ConversionError(f"{spec.name}: --{name} must be one of {', '.join(choices)}, got {value!r}")
    return values


__all__ = [
    "CONVERTERS",
    "ConversionError",
    "ConverterSpec",
    "Converted",
    "Option",
    "Summary",
    "Table",
    "convert_dataset",
]
