"""The Qt side of the plugin: the "Analyze slide" dock widget and its panels.

The only package of napari-mran that imports Qt (qtpy, napari.qt) or vispy; what
the widget decides and computes lives in the Qt-free modules one level up
(:mod:`..run`, :mod:`..shown`, :mod:`..jobs`, :mod:`..layers`, ...).
"""
