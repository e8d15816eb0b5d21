"""One seeding module: every seed derived from a trial's seed is derived in bench/core/seeding.py.

The harness once had three dialects (named streams, prime offsets added inline, ``seed *
1_000_003 + crc32`` and ``+1013`` inside attacks). The released offsets now live under names in
:data:`bench.core.seeding.OFFSETS` with their values unchanged (the quick record's numbers stay
valid); a test keeps new inline arithmetic out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from bench.core import seeding

ROOT = Path(__file__).resolve().parents[2]


def _seedish(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return "seed" in name.lower()


def seed_arithmetic(source: str) -> list[str]:
    """Expressions combining a seed with an integer literal (``seed + 7919``, ``seed * 3``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            sides = (node.left, node.right)
            literal = any(isinstance(s, ast.Constant) and type(s.value) is int for s in sides)
            if literal and any(_seedish(s) for s in sides):
                found.append(ast.unparse(node))
    return found


def test_the_scan_finds_inline_seed_arithmetic():
    assert seed_arithmetic("g.manual_seed(ctx.seed + 3302)\nx = seed * 1_000_003 + 5") == [
        "ctx.seed + 3302",
        "seed * 1000003",
    ]
    assert seed_arithmetic("g.manual_seed(seeding.offset_seed(seed, 'x'))\nn = count + 1") == []


def test_no_seed_is_derived_outside_the_seeding_module():
    stray = [
        f"{path.relative_to(ROOT)}: {expr}"
        for package in ("bench", "attacks", "defenses")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "seeding.py"
        for expr in seed_arithmetic(path.read_text())
    ]
    assert not stray, "derive seeds in bench/core/seeding.py:\n" + "\n".join(stray)


def test_released_offsets_keep_their_values_and_streams_are_independent():
    """The offsets the quick record was produced with (changing one would change its numbers
    without a revision bump), and named streams that differ by name only."""
    assert seeding.offset_seed(5, "after_cell") == 6
    assert seeding.offset_seed(5, "clean_subset") == 5 + 7919
    assert seeding.artifact_seed(2, "surrogate") == 2 * 1_000_003 + 1_955_053_206  # crc32
    a, b = seeding.generator(3, "cross_train"), seeding.generator(3, "cross_test")
    assert not torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))
    assert seeding.stream_seed(0, "isolation") == 6082608012549177634  # as bench.api had it
    assert len(set(seeding.OFFSETS.values())) == len(seeding.OFFSETS)
