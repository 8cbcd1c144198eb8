"""Predict many slides: one results store per slide, a predictions table, on dask.distributed.

``predict_cohort(slides, model, out_dir, options, ...)`` is a generator of
:class:`CohortEvent` (one per finished slide) returning a summary dict.  The CLI
(``napari-mran predict``) renders the events; tests drain them.  The code lives in
:mod:`napari_mran.batch` (this module is its public face).

Output folder (docs/cli.md)::

    <out>/<slide stem>.mran.zarr   one verified results store per slide
    <out>/predictions.csv          one row per slide of this run (strict, formula-safe)
    <out>/mran-cohort.json         what made the stores (model sha256, options, slides)
    <out>/.napari-mran.lock        held while a run uses the folder

Rules (docs/reliability.md fact 11, rows 15, 16, 17, 20, 22, 24):

- a slide is skipped only when its store is verified complete (:func:`verify_store`:
  completion marker and the checksum of every array) *and* was made by the same
  model file (sha256), the same analysis options and the same slide file; never on
  mere existence.  A store of ours that fails verification is moved aside (renamed
  ``*.invalid-<time>``, never deleted) and the slide analysed again.  A valid store
  made differently is replaced only with ``overwrite=True``.
- anything at an output name that is not ours (a file, a foreign folder, a
  ``predictions.csv`` without our ``mran-cohort.json``) makes the run refuse before
  any computation; it is never deleted.
- a lock file makes a second run on the same folder refuse while the first runs.
- a failing slide is recorded (error class + message) and the others go on.
- every store is written atomically by the worker that computed it, so an
  interrupted run leaves only complete stores (at worst a hidden ``.partial-``
  folder); the next run skips them, giving the same results as an uninterrupted run.
"""

from __future__ import annotations

from .batch.cohort import (PREDICTIONS_NAME, CohortEvent, analysis_options, predict_cohort,
                           run_cohort)
from .batch.common import CohortError
from .batch.executors import default_workers
from .batch.lock import LOCK_NAME, OutputLock, prepare_out_dir
from .batch.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, find_store
from .batch.models import resolve_model_path
from .batch.outputs import DEMO_MODEL_LABEL, write_csv, write_json
from .batch.records import SlideRecord, SlideStatus, Stage
from .batch.slides import SLIDE_EXTENSIONS, expand_slides, slide_fingerprint, store_names
from .batch.stores import COHORT_KEY, store_status
from .batch.worker import dask_setup  # LocalCluster(preload=["napari_mran.cohort"]) works
from .vocab import STORE_SUFFIX

__all__ = [
    "COHORT_KEY",
    "CohortError",
    "CohortEvent",
    "DEMO_MODEL_LABEL",
    "LOCK_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "OutputLock",
    "PREDICTIONS_NAME",
    "SLIDE_EXTENSIONS",
    "STORE_SUFFIX",
    "SlideRecord",
    "SlideStatus",
    "Stage",
    "analysis_options",
    "dask_setup",
    "default_workers",
    "expand_slides",
    "find_store",
    "predict_cohort",
    "prepare_out_dir",
    "resolve_model_path",
    "run_cohort",
    "slide_fingerprint",
    "store_names",
    "store_status",
    "write_csv",
    "write_json",
]
