"""Viewer tests need Qt with a real OpenGL context: run under Xvfb (pytest-xvfb) with xcb."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")


def _why_not() -> str | None:
    try:
        import napari  # noqa: F401
        import qtpy  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"napari/Qt not importable: {exc}"
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return "offscreen Qt cannot create the GL context napari needs"
    if not os.environ.get("DISPLAY"):
        return "no X display (install xvfb + pytest-xvfb: make sysdeps)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not()
    if reason is None:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True, scope="session")
def _software_gl_guard():
    """The plugin's own guard against the Mesa software-GL crash when layers are removed
    (napari_mran/_napari/_qt/gl_guard.py); plugin activation installs it too, but a test
    may remove layers before any napari-mran command has run."""
    try:
        from napari_mran._napari._qt.gl_guard import install
    except Exception:  # noqa: BLE001 - no vispy: the GUI tests are skipped anyway
        return
    install()


@pytest.fixture
def errors(monkeypatch):
    """The error notifications shown during the test (collected, not shown)."""
    from napari.utils import notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", seen.append)
    return seen
