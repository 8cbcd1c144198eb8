"""Running a model over many slides: ``napari-mran predict`` (:mod:`.cohort`, public
as :mod:`napari_mran.cohort`) and ``napari-mran evaluate`` (:mod:`.evaluate`, public
as :mod:`napari_mran.evaluation`).

- :mod:`.records`: the per-slide record and the event stages both runs share;
- :mod:`.slides`: slide lists and store names;  :mod:`.stores`: whether a store may be
  skipped, replaced or set aside;  :mod:`.manifest`: what made a cohort folder;
- :mod:`.lock`: the output-folder lock;  :mod:`.models`: checkpoints by path;
- :mod:`.worker`, :mod:`.executors`: one slide's task, in this process or on dask;
- :mod:`.outputs`: strict CSV/JSON writers;  :mod:`.report`: evaluation tables/plots.

Importing this package imports neither torch nor dask nor matplotlib.
"""
