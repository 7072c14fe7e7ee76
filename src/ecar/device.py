"""Which device to run on (the one place that picks one; everything else follows its inputs).

A device name is checked in two steps, both raising :class:`ConfigError` that names the
field or flag it came from: its spelling when a config is loaded or a flag is read
(:func:`check_device_name`), its availability only when a run picks it
(:func:`pick_device`) — a checkpoint trained with ``train.device=cuda`` must still load on
a CPU machine for sampling. Also here: how much host memory is free, for refusing a
request that cannot fit before it starts (:func:`available_memory`).
"""

from __future__ import annotations

import os

import torch

from ecar.errors import ConfigError, shown

__all__ = ["DEVICE_NAMES", "available_memory", "check_device_name", "pick_device"]

DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"
"""The device names ecar accepts (for messages and help texts)."""


def check_device_name(name: object, where: str = "device") -> None:
    """Raise :class:`ConfigError` unless ``name`` is a device name ecar can use (auto, cpu,
    cuda, cuda:N, mps); availability is :func:`pick_device`'s concern."""
    if name == "auto":
        return
    try:
        dev = torch.device(name) if isinstance(name, str) else None
    except Exception:  # noqa: BLE001 - whatever torch's parser raises, the name is not a device
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where}={shown(name)} is not a device; use one of: {DEVICE_NAMES}")


def pick_device(name: str, local_rank: int = 0, where: str = "device") -> torch.device:
    """``auto`` -> cuda:local_rank if CUDA is available, else mps, else cpu.

    A device that is named but not available on this machine is a :class:`ConfigError`
    naming ``where`` (``train.device``, ``--device``) and what to use instead.
    """
    check_device_name(name, where)
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}={name} but CUDA is not available on this machine; "
                              f"use {where}=cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}={name}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not mps_ok:
        raise ConfigError(f"{where}={name} but MPS (Apple GPU) is not available on this machine; "
                          f"use {where}=cpu or auto")
    return dev


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (``MemAvailable`` on Linux, free
    pages elsewhere), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
