"""Published reference tables: which exist, and one loaded with its names mapped to ours.

A reference is a CSV named ``<name>.csv`` with the columns of :data:`COLUMNS` (a subset of the
results table's: dataset, model, attack, defense, ratio, ca, asr, ra, as fractions) and an
optional sidecar ``<name>.toml`` (title, source, notes, the CSV's sha256, ``missing_value`` (a
placeholder the CSV uses for "no number"; those rows are dropped) and ``[names.*]`` tables renaming
its components to ours). The package ships those under ``bench/reference/``;
a user adds one in ``<results dir>/references/`` (found first) or names a CSV path.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.schema import Col

#: The reference the shipped presets compare with when their rows name none.
DEFAULT = "backdoorbench-preactresnet18"
COLUMNS = [Col.dataset, Col.model, Col.attack, Col.defense, Col.ratio, Col.ca, Col.asr, Col.ra]
#: What makes a published cell: a reference holds one row per key.
KEY = [Col.dataset, Col.attack, Col.defense, Col.ratio]
#: Columns a sidecar may rename values of (``[names.attack]`` etc.).
RENAMABLE = (Col.dataset, Col.model, Col.attack, Col.defense)


@dataclass(frozen=True)
class Reference:
    name: str
    title: str
    source: str
    notes: str
    #: One row per published cell, names mapped to ours; columns :data:`COLUMNS`.
    table: pd.DataFrame
    where: str  # the file it was read from


def packaged_dir() -> Traversable:
    return resources.files("bench").joinpath("reference")


@dataclass(frozen=True)
class Source:
    """Where a reference lives: its CSV and, when there is one, its sidecar."""

    csv: Traversable | Path
    sidecar: Traversable | Path | None


def _in(where: Traversable | Path) -> dict[str, Source]:
    if not where.is_dir():
        return {}
    files = {p.name: p for p in where.iterdir()}
    return {
        name.removesuffix(".csv"): Source(p, files.get(name.removesuffix(".csv") + ".toml"))
        for name, p in files.items()
        if name.endswith(".csv")
    }


def available(user_dir: Path | None = None) -> dict[str, Source]:
    """Reference name -> where it lives; a user's (``user_dir``) shadows a shipped one."""
    return {**_in(packaged_dir()), **(_in(user_dir) if user_dir is not None else {})}


def load(name_or_path: str, user_dir: Path | None = None) -> Reference:
    """The reference called ``name_or_path``, or the CSV at that path (its sidecar beside it)."""
    known = available(user_dir)
    if name_or_path in known:
        return load_file(known[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.suffix == ".csv" or path.exists():
        if not path.is_file():
            raise BenchError(f"reference file {path} does not exist")
        sidecar = path.with_suffix(".toml")
        return load_file(Source(path, sidecar if sidecar.is_file() else None))
    raise BenchError(
        f"unknown reference {name_or_path!r}; known: {', '.join(sorted(known)) or 'none'} "
        "(or give the path of a CSV with the columns " + ", ".join(COLUMNS) + ")"
    )


def _meta(source: Source) -> dict:
    if source.sidecar is None:
        return {}
    try:
        return tomllib.loads(source.sidecar.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"reference sidecar {source.sidecar} is not valid TOML: {exc}") from exc


def load_file(source: Source) -> Reference:
    """Read, check and rename one reference CSV (with its sidecar)."""
    csv = source.csv
    name = csv.name.removesuffix(".csv")
    raw = csv.read_bytes()
    meta = _meta(source)
    expected = meta.get("sha256")
    if expected and hashlib.sha256(raw).hexdigest() != expected:
        raise BenchError(
            f"reference {csv} does not match the sha256 in its sidecar: the file was changed "
            "(restore it, or update the sidecar with where the new one came from)"
        )
    try:
        table = pd.read_csv(io.BytesIO(raw))
    except (ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"reference {csv} is not a readable CSV: {exc}") from exc
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise BenchError(
            f"reference {csv} lacks the columns {missing} (a reference has "
            + ", ".join(COLUMNS)
            + ")"
        )
    table = table[COLUMNS].copy()
    for column in RENAMABLE:
        table[column] = table[column].astype(str).replace(meta.get("names", {}).get(column, {}))
    try:
        for column in (Col.ratio, Col.ca, Col.asr, Col.ra):
            table[column] = pd.to_numeric(table[column]).astype(float)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"reference {csv}: {exc}") from exc
    if "missing_value" in meta:  # a placeholder for "no published number": not a cell
        placeholder = (table[[Col.ca, Col.asr, Col.ra]] == float(meta["missing_value"])).any(axis=1)
        table = table[~placeholder]
    metrics = table[[Col.ca, Col.asr, Col.ra]]
    if ((metrics < 0) | (metrics > 1)).any().any():
        raise BenchError(
            f"reference {csv}: ca, asr and ra must be fractions in [0, 1] (percent given?)"
        )
    table[Col.ratio] = table[Col.ratio].round(6)
    duplicated = table[table.duplicated(KEY, keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise BenchError(
            f"reference {csv} holds {len(duplicated)} rows for repeated cells, e.g. "
            + ", ".join(f"{k}={first[k]}" for k in KEY)
            + ": one row per dataset, attack, defense and ratio"
        )
    return Reference(
        name=name,
        title=str(meta.get("title", name)),
        source=str(meta.get("source", "")),
        notes=str(meta.get("notes", "")),
        table=table.reset_index(drop=True),
        where=str(csv),
    )
