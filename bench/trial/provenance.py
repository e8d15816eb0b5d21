"""Where and how a trial ran: its spec as columns, the device, the host, package versions, the
code revision and timestamps, so any row can be traced back and reproduced."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from typing import Any

import torch

from bench.core import versions
from bench.schema import Col
from bench.spec import TrialSpec


def flatten_spec(spec: TrialSpec) -> dict[str, Any]:
    """Spec fields as table columns; nested parameters as canonical JSON strings."""
    flat = {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
        for k, v in spec.to_dict().items()
    }
    return {**flat, Col.spec: spec.canonical()}


def spec_columns(spec: TrialSpec) -> dict[str, Any]:
    """The columns that identify a trial: its ids and its spec."""
    return {Col.trial_id: spec.trial_id, Col.config_id: spec.config_id, **flatten_spec(spec)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory of this trial, or the worker process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def provenance(device: torch.device, started_at: float) -> dict[str, Any]:
    """The columns that say where, when and with what code a trial ran."""
    return {
        Col.device: device_name(device),
        Col.node: socket.gethostname(),
        Col.pid: os.getpid(),
        Col.started_at: started_at,
        Col.finished_at: time.time(),
        Col.versions: versions.package_versions(),
        Col.git_rev: versions.git_revision(),
        Col.python: platform.python_version(),
    }
