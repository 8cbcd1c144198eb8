"""npe2 sample-data contributions."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..slide import open_slide
from .layers import slide_layer_data


def sample_slide_path() -> Path:
    """Path of the bundled CMU-1-Small-Region.svs (real H&E, CC0)."""
    return Path(str(files("napari_mran") / "data" / "CMU-1-Small-Region.svs"))


def cmu1_small_region():
    return [slide_layer_data(open_slide(sample_slide_path()))]


def synthetic_slide_path() -> Path:
    """A synthetic multi-level H&E-like slide, made once in the user cache folder."""
    from ..synthetic import make_slide
    from .._paths import user_cache_dir

    out = user_cache_dir() / "samples" / "synthetic-tumour-16384.svs"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        make_slide(out, 16384, 12288, tumour=True, seed=7)
    return out


def synthetic_pyramid():
    return [slide_layer_data(open_slide(synthetic_slide_path()),
                             name="synthetic H&E-like slide (not real tissue)")]
