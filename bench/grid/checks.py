"""Checks that keep plugins honest: their classes before a grid starts, their outputs in a trial.

Every message names the plugin and says what to fix, because plugin authors read them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import torch
from torch import nn

from bench.errors import PluginError

__all__ = ["PluginError", "check_component_class"]


def check_component_class(cls: type, kind: str, where: str) -> None:
    """Static checks of an attack or defense class (attributes, types, parameters)."""
    from attacks.base import CLEAN_LABEL, POISON_LABEL
    from bench.api import NEEDS

    problems = []
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        problems.append("'name' must be a non-empty str")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        problems.append("'Params' must be a dataclass of hyperparameters with defaults")
    else:
        missing = [
            f.name
            for f in dataclasses.fields(params)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            problems.append(f"every parameter needs a default; {missing} have none")
    if kind == "defense":
        needs = getattr(cls, "needs", None)
        if not isinstance(needs, (frozenset, set)) or not needs <= NEEDS:
            problems.append(
                f"'needs' must be a frozenset drawn from {sorted(NEEDS)}, got {needs!r}"
            )
        if not isinstance(getattr(cls, "reconstructed", False), bool):
            problems.append("'reconstructed' must be a bool")
        required_method = "run"
    else:
        if getattr(cls, "label_policy", None) not in (POISON_LABEL, CLEAN_LABEL):
            problems.append(f"'label_policy' must be {POISON_LABEL!r} or {CLEAN_LABEL!r}")
        required_method = "apply"
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        problems.append(f"abstract method(s) not implemented: {missing}")
    elif not callable(getattr(cls, required_method, None)):
        problems.append(f"'{required_method}' must be a method")
    if problems:
        raise PluginError(f"{where}: " + "; ".join(problems))


def check_model(
    model: Any, num_classes: int, sample: torch.Tensor, device: torch.device, who: str
) -> None:
    """The returned model maps a uint8-derived float batch to finite (N, num_classes) logits."""
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"{who}: returned model is a {type(model).__name__}, not a torch.nn.Module"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample.to(device).float().div(255))
    except Exception as exc:
        raise PluginError(
            f"{who}: the returned model fails on a {tuple(sample.shape)} batch: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(sample), num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PluginError(
            f"{who}: the model must output ({len(sample)}, {num_classes}) logits "
            f"for {num_classes} classes, got {shape}"
        )
    if not torch.isfinite(logits.float()).all():
        raise PluginError(f"{who}: the model outputs NaN or infinite logits")


def check_input_transform(
    transform: Any, sample: torch.Tensor, device: torch.device, who: str
) -> None:
    """A test-time transform must map uint8 batches to uint8 batches of the same shape/device."""
    if not callable(transform):
        raise PluginError(
            f"{who}: input_transform must be callable, got {type(transform).__name__}"
        )
    x = sample.to(device)
    try:
        out = transform(x)
    except Exception as exc:
        raise PluginError(
            f"{who}: input_transform fails on a uint8 batch: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise PluginError(f"{who}: input_transform returned {type(out).__name__}, not a tensor")
    changes = [
        f"{what} {a} -> {b}"
        for what, a, b in (
            ("shape", tuple(x.shape), tuple(out.shape)),
            ("dtype", x.dtype, out.dtype),
            ("device", x.device, out.device),
        )
        if a != b
    ]
    if changes:
        raise PluginError(
            f"{who}: input_transform must keep shape, dtype (uint8) and device; "
            f"it changed {', '.join(changes)}"
        )


def check_flagged(flagged: Any, n_train: int, who: str) -> torch.Tensor:
    """Flagged training indices: a 1-D integer tensor of distinct values in [0, n_train)."""
    if not isinstance(flagged, torch.Tensor):
        try:
            flagged = torch.as_tensor(flagged)
        except Exception as exc:
            raise PluginError(f"{who}: flagged must be a tensor of training indices") from exc
    if flagged.dtype == torch.bool:
        if flagged.shape != (n_train,):
            raise PluginError(
                f"{who}: a boolean flagged mask must have shape ({n_train},), "
                f"got {tuple(flagged.shape)}"
            )
        return torch.nonzero(flagged).flatten().cpu()
    if flagged.dim() != 1 or flagged.is_floating_point() or flagged.is_complex():
        raise PluginError(
            f"{who}: flagged must be a 1-D integer tensor of training indices, got "
            f"{flagged.dtype} with shape {tuple(flagged.shape)}"
        )
    if len(flagged) and (int(flagged.min()) < 0 or int(flagged.max()) >= n_train):
        raise PluginError(
            f"{who}: flagged indices must lie in [0, {n_train}); got range "
            f"[{int(flagged.min())}, {int(flagged.max())}]"
        )
    return flagged.long().unique().cpu()


def check_metrics(values: dict[str, float], who: str) -> None:
    bad = [k for k, v in values.items() if not isinstance(v, float) or math.isnan(v)]
    if bad:
        raise PluginError(f"{who}: evaluation produced NaN for {bad}")


def check_rejections(reject: Any, images: torch.Tensor, who: str) -> float:
    """The fraction of ``images`` a defense's rejection rule refuses (one bool per image)."""
    if not callable(reject):
        raise PluginError(f"{who}: reject must be callable, got {type(reject).__name__}")
    try:
        out = reject(images)
    except Exception as exc:
        raise PluginError(
            f"{who}: reject fails on a uint8 batch: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.shape != (len(images),):
        raise PluginError(
            f"{who}: reject must return one boolean per image, shape ({len(images)},), got "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
    return out.bool().float().mean().item() if len(images) else math.nan
