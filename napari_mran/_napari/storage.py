"""Where the widget saves results stores (no Qt; the docs describe these decisions)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputExistsError
from ..vocab import STORE_SUFFIX, file_stem, store_names

RESULTS_SUBFOLDER = "mran-results"
#: how many ``<stem>-<k>`` names a run tries before giving up
MAX_RUNS_PER_NAME = 999


def default_results_folder(slide_path: str | os.PathLike) -> Path:
    """``<slide folder>/mran-results`` when that can be written, else the user cache.

    The bundled sample slides (inside the installed package) always use the cache.
    Nothing is ever written beside the user's files in any other place; the folder is
    shown in the panel before the analysis starts and can be changed there.
    """
    from .._paths import user_cache_dir

    here = Path(os.path.abspath(slide_path)).parent
    package = Path(os.path.abspath(__file__)).parents[1]
    if here == package or package in here.parents:  # bundled sample data
        return user_cache_dir() / "results"
    target = here / RESULTS_SUBFOLDER
    if target.is_dir():
        ok = os.access(target, os.W_OK | os.X_OK)
    else:
        ok = here.is_dir() and os.access(here, os.W_OK | os.X_OK)
    return target if ok else user_cache_dir() / "results"


def run_store_names(slide_path: str | os.PathLike):
    """The store names a run of *slide_path* may use, in order: the slide's store name
    (:func:`napari_mran.vocab.store_names`, as the CLI and cohort runs name it), then
    ``<stem>-2.mran.zarr``, ``<stem>-3.mran.zarr`` ...

    The numbered names are another case than the ``-<hash>`` of ``store_names``: that
    one tells *different slides* with the same stem apart in one batch; these keep the
    earlier runs of the *same slide* in the same folder (a run never replaces a store).
    """
    first = store_names([slide_path])[0]
    yield first
    stem = file_stem(first)
    for k in range(2, MAX_RUNS_PER_NAME + 1):
        yield f"{stem}-{k}{STORE_SUFFIX}"


def save_result_unique(result, folder: Path, slide_path: str | os.PathLike) -> Path:
    """Save *result* in *folder* under the first free name of :func:`run_store_names`.

    Never replaces an existing store (two runs never share one output).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in run_store_names(slide_path):
        path = folder / name
        if os.path.lexists(path):
            continue
        try:
            return result.save(path, overwrite=False)
        except OutputExistsError:
            continue  # another run took the name between the check and the rename
    raise OutputExistsError(f"{folder}: no free name for {store_names([slide_path])[0]}")
