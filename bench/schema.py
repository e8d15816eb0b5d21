"""The results table's row schema: every column of ``results.parquet``, its dtype and meaning, which
columns identify a trial, and the upgrade that brings a table written by older code up to date.

Code names a column through :class:`Col` (``row[Col.ca]``, ``df[Col.defense_seconds]``), never
through a string literal, so this module is the only place a column name is written (a test keeps it
that way). :func:`upgrade` runs once, when :meth:`bench.store.ResultsStore.read` loads a table:
columns renamed since are renamed, missing ones get their typed default, every column gets its
dtype, so readers never ask whether a column exists.

Adding a column: define it in :class:`Col` (with its default, if the typed one is wrong for old
rows) and bump :data:`SCHEMA_VERSION`. Renaming one: rename it here and add the old name to
:data:`RENAMED`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.errors import BenchError

#: The distribution of the built-in attacks and defenses.
BUILTIN_PACKAGE = "backdoor-leaderboard"

#: The schema new rows are written under; rows from older code keep theirs (0: before versioning).
SCHEMA_VERSION = 6  # 2: data_hash; 3: defense_metrics; 4: attack_revision; 5: defense_revision;
# 6: defense_reference_name

# Column dtypes (pandas). Nullable ``Int64`` / ``boolean`` where a value can be unknown (an
# error row has no counts); ``str`` columns hold "" where there is nothing to say.
STR = "str"
FLOAT = "float64"
COUNT = "Int64"
BOOL = "bool"
MAYBE_BOOL = "boolean"

_TYPED_DEFAULTS: dict[str, Any] = {
    STR: "",
    FLOAT: math.nan,
    COUNT: pd.NA,
    BOOL: False,
    MAYBE_BOOL: pd.NA,
}

# Values of the ``status`` column.
OK = "ok"
ERROR = "error"
TIMEOUT = "timeout"
#: A cell left out of the grid (a clean-label ratio its target class cannot supply); no compute.
SKIPPED = "skipped"


@dataclass(frozen=True)
class Column:
    """One column: its name, pandas dtype, meaning, and whether it is part of the trial's spec
    (the :class:`bench.spec.TrialSpec` fields, which identify the trial)."""

    name: str
    dtype: str
    meaning: str
    spec: bool = False
    default: Any = None  # None: the dtype's typed default

    @property
    def fill_value(self) -> Any:
        return _TYPED_DEFAULTS[self.dtype] if self.default is None else self.default


class _Define:
    """A column definition inside :class:`Col`; reading ``Col.<name>`` gives the name (a str)."""

    def __init__(self, dtype: str, meaning: str, spec: bool, default: Any):
        self.args = (dtype, meaning, spec, default)
        self.column: Column | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.column = Column(name, *self.args)

    def __get__(self, obj: object, owner: type | None = None) -> str:
        assert self.column is not None
        return self.column.name


def _col(dtype: str, meaning: str, *, spec: bool = False, default: Any = None) -> _Define:
    return _Define(dtype, meaning, spec, default)


class Col:
    """Every column of the results table, in table order. ``Col.ca == "ca"``."""

    # Identity
    trial_id = _col(STR, "hash of the canonical spec: the row's key (one row per trial)")
    config_id = _col(
        STR,
        "hash of the canonical spec without the seed: which parameter version of a cell the "
        "row belongs to (the seeds of one version share it)",
    )
    schema_version = _col(
        COUNT, "the row schema the row was written under (0: unversioned)", default=0
    )
    # The spec (TrialSpec fields; defaults are TrialSpec's, as it reads an older spec)
    dataset = _col(STR, "dataset name (cifar10, gtsrb)", spec=True)
    attack = _col(STR, "attack name", spec=True)
    attack_params = _col(STR, "every attack parameter, defaults filled in (JSON)", spec=True)
    ratio = _col(FLOAT, "poison ratio: the fraction of training images poisoned", spec=True)
    target = _col(COUNT, "the attack's target class", spec=True)
    defense = _col(STR, "defense name ('none': no defense, the baseline)", spec=True)
    defense_params = _col(STR, "every defense parameter, defaults filled in (JSON)", spec=True)
    model = _col(STR, "model architecture", spec=True)
    preset = _col(STR, "the preset the grid came from", spec=True)
    seed = _col(COUNT, "the trial's seed", spec=True)
    train = _col(STR, "training budget and recipe (TrainConfig, JSON)", spec=True)
    data = _col(STR, "data budget: subset sizes and subset seed (JSON)", spec=True)
    exclude_target_from_poison = _col(
        BOOL, "poison-label draws skip the target class", spec=True, default=True
    )
    reference = _col(
        STR,
        "the published reference table the preset's protocol follows ('' for none)",
        spec=True,
        default="",
    )
    precision = _col(
        STR, "the precision the spec asks for: auto, fp32 or bf16", spec=True, default="auto"
    )
    clean_fraction = _col(
        FLOAT, "training fraction given as a clean subset (0: none)", spec=True, default=0.0
    )
    data_hash = _col(
        STR,
        "content hash of the decoded dataset (bench.data; '' for rows older than the column): "
        "part of the trial id and of every artifact key, so other data is another trial",
        spec=True,
        default="",
    )
    attack_revision = _col(
        COUNT,
        "the attack's code revision (Attack.revision; in the trial id from 2 on): a change to "
        "what an attack makes is another trial, and its caches are rebuilt",
        spec=True,
        default=1,
    )
    defense_revision = _col(
        COUNT,
        "the defense's code revision (Defense.revision; in the trial id from 2 on): a change to "
        "what a defense does is another trial, so a resumed grid reruns it",
        spec=True,
        default=1,
    )
    spec = _col(STR, "the canonical spec (JSON; TrialSpec.from_dict rebuilds the trial)")
    # Outcome
    status = _col(
        STR,
        f"{OK!r}, {ERROR!r} (raised), {TIMEOUT!r} (past the time limit) or {SKIPPED!r} (left "
        "out of the grid, the reason in error)",
    )
    error = _col(STR, "traceback of a failed trial ('' when ok)")
    attempts = _col(COUNT, "attempts the runner made (1 + retries used)")
    # Metrics (fractions in [0, 1])
    ca = _col(FLOAT, "clean accuracy on the clean test set")
    asr = _col(FLOAT, "attack success rate: triggered non-target test images sent to target")
    ra = _col(FLOAT, "robust accuracy: triggered non-target test images kept at their label")
    cross_acc = _col(FLOAT, "accuracy on cross-transformed test images (WaNet, IAD, BPP)")
    clean_reject_rate = _col(FLOAT, "clean test images the defense rejects (e.g. NAB)")
    bd_reject_rate = _col(FLOAT, "triggered test images the defense rejects")
    # Sizes
    n_train = _col(COUNT, "training images")
    n_test = _col(COUNT, "test images")
    n_poison = _col(COUNT, "poisoned (backdoor) training images")
    n_cross = _col(COUNT, "cross / noise / negative training samples (labels kept)")
    n_clean_subset = _col(COUNT, "clean images given to the defense")
    n_flagged = _col(COUNT, "training samples the defense flagged (-1: it flags none)")
    # Detection of the flagged samples against the hidden poison mask
    det_tp = _col(FLOAT, "flagged poisoned samples")
    det_fp = _col(FLOAT, "flagged clean samples")
    det_fn = _col(FLOAT, "poisoned samples not flagged")
    det_tn = _col(FLOAT, "clean samples not flagged")
    det_tpr = _col(FLOAT, "detection true-positive rate")
    det_fpr = _col(FLOAT, "detection false-positive rate")
    det_precision = _col(FLOAT, "detection precision")
    det_f1 = _col(FLOAT, "detection F1")
    det_auroc = _col(FLOAT, "AUROC of the defense's per-sample scores")
    # The defense's own figures (DefenseOutput.metrics)
    defense_metrics = _col(
        STR, "numbers the defense reported about its run, e.g. samples relabelled (JSON object)"
    )
    # The components
    attack_mode = _col(STR, "'static' or 'training-controlled'")
    attack_package = _col(STR, "distribution providing the attack")
    attack_version = _col(STR, "its package's version (attack_revision is its code revision)")
    defense_package = _col(STR, "distribution providing the defense")
    defense_version = _col(STR, "its version")
    defense_reconstructed = _col(MAYBE_BOOL, "rebuilt from the paper (no official code)")
    defense_reference_name = _col(
        STR,
        "the name published references give this defense (Defense.reference_name; '' none): "
        "bench reproduce matches a row with a published cell under this name only, never by "
        "the bare registry name (rows older than the column: a built-in's own name)",
    )
    # Caches
    poisoned_sets_cache = _col(STR, "the cell's poisoned sets: 'built' or 'hit'")
    backdoored_model_cache = _col(STR, "the undefended model: 'built', 'hit' or '' (not used)")
    attack_artifacts = _col(STR, "attack artifacts fetched: kind, built/hit, seconds (JSON)")
    defense_artifacts = _col(STR, "shared defense stages: kind, built/hit, seconds (JSON)")
    # Cost (seconds, wall clock)
    attack_seconds = _col(FLOAT, "fitting the attack and poisoning, without lock waits")
    defense_seconds = _col(
        FLOAT, "the defense's own work: no undefended-model training, no lock waits"
    )
    wait_seconds = _col(FLOAT, "blocked on artifacts another trial was building")
    backdoored_train_seconds = _col(FLOAT, "training the undefended model (where it was built)")
    train_seconds = _col(FLOAT, "defense_seconds + backdoored_train_seconds")
    eval_seconds = _col(FLOAT, "evaluating CA / ASR / RA")
    stage_seconds = _col(STR, "seconds per stage the defense reported (JSON)")
    wall_seconds = _col(FLOAT, "the whole trial")
    peak_memory_mb = _col(FLOAT, "peak GPU memory, or the worker's peak RSS on CPU")
    # Provenance
    data_source = _col(STR, "where the images came from (archive, folder, download)")
    device = _col(STR, "GPU name, or the CPU and its threads")
    precision_used = _col(STR, "the precision the trial trained and evaluated at: fp32 or bf16")
    node = _col(STR, "host name")
    pid = _col(COUNT, "worker process id")
    started_at = _col(FLOAT, "start, Unix seconds")
    finished_at = _col(FLOAT, "end, Unix seconds")
    versions = _col(STR, "package versions (JSON)")
    git_rev = _col(STR, "the harness's git revision ('-dirty': uncommitted changes)")
    python = _col(STR, "Python version")
    run = _col(STR, "results/runs/<run> of the run that produced the row")
    ray_node = _col(STR, "Ray node id")
    node_ip = _col(STR, "Ray node address")


#: Every column, in table order.
COLUMNS: tuple[Column, ...] = tuple(
    d.column for d in vars(Col).values() if isinstance(d, _Define) and d.column is not None
)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
#: The columns that identify a trial (the TrialSpec fields).
SPEC_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.spec)


@dataclass(frozen=True)
class Renamed:
    """A column an older schema called ``old``; ``convert`` maps its old values to the new."""

    old: str
    new: str
    convert: Callable[[pd.Series], pd.Series] = lambda s: s


#: Columns renamed since the first tables were written.
RENAMED: tuple[Renamed, ...] = (
    # Before the det_* columns: flagged poisoned samples, -1 when the defense flags none.
    Renamed("flagged_poison", Col.det_tp, lambda s: s.where(s >= 0)),
    # Before presets named their reference: only the paper preset (BackdoorBench's recipe) was
    # comparable with published numbers.
    Renamed(
        "paper_comparable",
        Col.reference,
        lambda s: s.map(lambda v: "backdoorbench-preactresnet18" if v else ""),
    ),
)


def config_id_of(spec: Mapping[str, Any]) -> str:
    """Hash of a canonical spec without its seed: equal for trials that differ only in the seed."""
    rest = {k: v for k, v in spec.items() if k != Col.seed}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _config_ids(df: pd.DataFrame) -> pd.Series:
    """config_id of rows written before the column, from their stored spec."""
    return pd.Series(
        [config_id_of(json.loads(s)) if isinstance(s, str) and s else "" for s in df[Col.spec]],
        index=df.index,
        dtype=object,
    )


def complete_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A new row with every column (typed defaults for what it lacks), in table order."""
    unknown = sorted(set(row) - set(NAMES))
    if unknown:
        raise ValueError(f"row columns {unknown} are not in the schema; define them in {__name__}")
    stamped = {Col.schema_version: SCHEMA_VERSION, **row}
    return {c.name: stamped.get(c.name, c.fill_value) for c in COLUMNS}


def empty_table() -> pd.DataFrame:
    """A table with every column and no rows."""
    return upgrade(pd.DataFrame(index=pd.RangeIndex(0)))


def upgrade(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` in the current schema: renamed columns renamed, missing columns added with their
    default, every column cast to its dtype, schema columns first in table order. Columns the
    schema no longer defines are kept (after the others): nothing read is ever dropped."""
    df = df.copy()
    for r in RENAMED:
        if r.old in df and r.new not in df:
            df[r.new] = r.convert(df.pop(r.old))
    for c in COLUMNS:
        if c.name in df:
            continue
        if c.name == Col.config_id and Col.spec in df:
            df[c.name] = _config_ids(df)  # derived: old rows still group by parameter version
        elif c.name == Col.defense_reference_name and Col.defense in df:
            package = df.get(Col.defense_package, pd.Series("", index=df.index)).fillna("")
            builtin = package.isin(["", BUILTIN_PACKAGE])
            df[c.name] = df[Col.defense].where(builtin, "")  # built-ins were their own names
        else:
            df[c.name] = pd.Series(c.fill_value, index=df.index)
    for c in COLUMNS:
        df[c.name] = _cast(df[c.name], c)
    extra = [name for name in df.columns if name not in BY_NAME]
    return df[[*NAMES, *extra]]


def _cast(values: pd.Series, column: Column) -> pd.Series:
    if column.dtype == STR:
        # Text stays text; a column that held nothing yet (all missing) becomes "".
        return values.fillna("") if values.isna().all() else values
    try:
        return values.astype(column.dtype)
    except (TypeError, ValueError) as exc:
        raise BenchError(
            f"results column {column.name!r} does not hold {column.dtype} values ({exc}); "
            "the table was not written by this harness or is damaged"
        ) from exc
