"""Running the upstream branch on batches of bags: channels-last input, autocast, a
torch.compile that falls back to eager, and batch halving on CUDA out-of-memory.  The
engine and the faithfulness re-predictions share it."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import AnalysisError
from .device import amp_policy


class UpstreamRunner:
    """``runner(x)`` = the model's ``forward_bags`` on a (n, 3, H, W) float tensor, under
    the AMP policy, compiled when asked (falling back to eager on a failed first call).

    ``compile_state``: ``"no"``, ``"pending"``, ``"yes"`` or ``"failed (...); eager"``.
    """

    def __init__(self, model: Any, dev: Any, *, amp: Any = "auto", compile: bool | str = False,
                 top_k_patches: int | None = None) -> None:
        import torch

        self.model, self.dev, self.top_k_patches = model, dev, top_k_patches
        self.use_amp, self.amp_dtype = amp_policy(amp, dev)
        self.fn: Callable[..., Any] = model.forward_bags
        #: applied to each input batch on the device first (stain normalisation on a GPU)
        self.pre: Callable[[Any], Any] | None = None
        self.compile_state = "no"
        if compile is True:
            try:
                self.fn = torch.compile(model.forward_bags, dynamic=True)
                self.compile_state = "pending"
            except Exception as exc:  # noqa: BLE001 - eager is always correct
                self.compile_state = f"failed ({type(exc).__name__}); eager"

    @property
    def amp_label(self) -> str:
        return str(self.amp_dtype) if self.use_amp else "off"

    def _call(self, x: Any) -> Any:
        import torch

        with torch.inference_mode():
            if self.pre is not None:  # in float32, before autocast
                x = self.pre(x)
            if self.use_amp:
                with torch.autocast(self.dev.type, dtype=self.amp_dtype):
                    return self.fn(x, top_k_patches=self.top_k_patches)
            return self.fn(x, top_k_patches=self.top_k_patches)

    def __call__(self, x: Any) -> Any:
        import torch

        if self.compile_state != "pending":
            return self._call(x)
        try:  # torch.compile builds on the first call: fall back to eager if that fails
            out = self._call(x)
            self.compile_state = "yes"
            return out
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - no compiler, unsupported op, ...
            self.fn = self.model.forward_bags
            self.compile_state = f"failed ({type(exc).__name__}); eager"
            return self._call(x)


def to_input(images: list[np.ndarray], dev: Any) -> Any:
    """(n, H, W, 3) uint8 images -> (n, 3, H, W) float in [0, 1] on *dev*, channels last
    (MRAN's input: RGB / 255, no mean/std normalisation)."""
    import torch

    x = torch.from_numpy(np.stack(images))                   # (n, H, W, 3) uint8
    x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2)     # (n, 3, H, W) channels_last view
    return x.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def forward_with_oom_retry(run: Callable[[Any], Any], images: list[np.ndarray], dev: Any,
                           bs: int) -> tuple[dict[str, np.ndarray], int]:
    """Run the upstream pass over ``images`` in chunks of ``bs``; halve on CUDA OOM."""
    import torch

    outs: list[dict[str, np.ndarray]] = []
    i = 0
    while i < len(images):
        chunk = images[i:i + bs]
        x = to_input(chunk, dev)
        try:
            o = run(x)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise AnalysisError("CUDA out of memory even with one bag per batch") from None
            torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            continue
        outs.append({
            "embedding": o.embedding.float().cpu().numpy(),
            "bag_probs": torch.softmax(o.bag_logits.float(), -1).cpu().numpy(),
            "alpha": o.alpha.float().cpu().numpy(),
            "patch_probs": torch.softmax(o.patch_logits.float(), -1).cpu().numpy(),
            "beta": o.beta.float().cpu().numpy(),
            "cell_probs": torch.softmax(o.cell_logits.float(), -1).cpu().numpy(),
        })
        i += len(chunk)
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return merged, bs
