"""Shared fixtures: the real slides in ../shared/data and slides written at test time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from datafiles import shared

# napari's settings (the reader preferences that plugin activation adds included) go to a
# throw-away file, never the user's: napari reads NAPARI_CONFIG when its settings module
# is first imported, which is after this root conftest.
if not os.environ.get("NAPARI_CONFIG"):
    os.environ["NAPARI_CONFIG"] = os.path.join(
        tempfile.mkdtemp(prefix="napari-mran-tests-"), "settings.yaml")


@pytest.fixture(scope="session")
def cmu_small() -> Path:
    return shared("CMU-1-Small-Region.svs")


@pytest.fixture(scope="session")
def cmu_pixels(cmu_small) -> np.ndarray:
    import tifffile

    return tifffile.imread(cmu_small)


@pytest.fixture(scope="session")
def svs_pyramid(tmp_path_factory, cmu_pixels) -> Path:
    """A 3-level Aperio-like JPEG pyramid made from the real CMU-1 crop (SVS layout)."""
    from slide_writers import write_svs_pyramid

    path = tmp_path_factory.mktemp("pyr") / "cmu-pyramid.svs"
    write_svs_pyramid(path, cmu_pixels, downsamples=(1, 2, 4), tile=256, mpp=0.499)
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A random-init MRAN checkpoint (width 0.0625; classes normal, tumour): fast and
    untrained, for tests of the plumbing around the model."""
    import torch

    from napari_mran.model import MRAN, MRANConfig, save_model

    torch.manual_seed(1)
    p = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(MRAN(MRANConfig(width=0.0625, class_names=["normal", "tumour"])), p)
    return p


@pytest.fixture(scope="module")
def tiny_model():
    """A random MRAN of width 0.125 (two classes), seeded: fast real-model tests."""
    import torch

    from napari_mran.model import MRAN, MRANConfig

    torch.manual_seed(0)
    return MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])).eval()
