"""Device and precision policy: which device, autocast or not, how many bags a batch."""

from __future__ import annotations

from typing import Any

from ..errors import AnalysisError


def pick_device(device: str = "auto") -> Any:
    """``auto`` -> CUDA, else MPS, else CPU; or the torch device asked for."""
    import torch

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise AnalysisError("CUDA was requested but no CUDA device is available")
    return torch.device("cuda" if device == "gpu" else device)


def on_device(model: Any, dev: Any) -> Any:
    """The model in eval mode on *dev*, channels last (but on MPS) as the analysis runs it."""
    import torch

    model = model.to(dev).eval()
    if dev.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    return model


def auto_batch(device: Any) -> int:
    """Bags per forward pass: 2 on a CPU, from free memory on a GPU."""
    if device.type == "cuda":
        import torch
        free, _ = torch.cuda.mem_get_info(device)
        # ~0.9 GB of activations per 1024 px bag at width 1 in bf16 (64 patches of 128 px)
        return int(max(1, min(32, free // (1.2 * 2**30))))
    return 2


def amp_policy(amp: Any, dev: Any) -> tuple[bool, Any]:
    """``(use autocast, dtype)`` for the ``amp`` option of :func:`analyze_slide` on *dev*."""
    import torch

    if amp is False or amp is None or amp == "off":
        return False, torch.float32
    if amp == "bf16":
        return True, torch.bfloat16
    if amp == "fp16":
        return True, torch.float16
    if amp is True or amp == "auto":
        if dev.type != "cuda":
            return False, torch.float32
        return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    raise ValueError(f"amp must be 'auto', 'bf16', 'fp16', 'off', True or False, not {amp!r}")
