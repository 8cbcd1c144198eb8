"""The headless core never imports napari, Qt or magicgui (GPU nodes have no display);
inside the napari plugin, Qt is imported only under ``napari_mran/_napari/_qt/``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "napari_mran"
GUI = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt")
QT = GUI[1:]
#: where Qt (and napari.qt, vispy) may be imported
QT_PACKAGE = ("_napari", "_qt")
#: napari-facing modules outside QT_PACKAGE that may import from it: npe2's
#: ``on_activate`` installs the software-GL guard (_qt/gl_guard.py, vispy)
QT_ENTRY_POINTS = {"_napari/_activate.py"}


def _module_of(rel: Path) -> list[str]:
    parts = ["napari_mran", *rel.with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path) -> set[str]:
    """Every module *path* imports (dotted, relative imports resolved), from anywhere
    in the file (imports inside functions count)."""
    rel = path.relative_to(PKG)
    package = _module_of(rel) if rel.name == "__init__.py" else _module_of(rel)[:-1]
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # (submodules)
    return out


def _is_qt(module: str) -> bool:
    top = module.split(".")[0]
    return top in QT or module == "napari.qt" or module.startswith("napari.qt.")


def test_core_modules_do_not_import_gui_packages():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "_napari":
            continue  # the plugin: test_qt_only_under_napari_qt
        bad = {m.split(".")[0] for m in _imports(path)} & set(GUI)
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders


def test_qt_only_under_napari_qt():
    """Qt, napari.qt and vispy only in napari_mran/_napari/_qt/; the rest of the plugin
    (readers, writers, layer data, the run and result controllers, the worker jobs) is
    Qt-free, and only the listed entry points import from _qt."""
    offenders = []
    for path in (PKG / "_napari").rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[:2] == QT_PACKAGE:
            continue
        imports = _imports(path)
        bad = sorted(m for m in imports if _is_qt(m))
        uses_qt_package = any(m.startswith("napari_mran._napari._qt") for m in imports)
        if uses_qt_package and rel.as_posix() not in QT_ENTRY_POINTS:
            bad.append("napari_mran._napari._qt")
        if bad:
            offenders.append(f"{rel}: {bad}")
    assert not offenders, offenders
    assert (PKG / "_napari" / "_qt" / "widget.py").is_file()


def test_importing_the_package_and_cli_loads_no_gui():
    code = (
        "import sys, napari_mran, napari_mran.cli, napari_mran.slide\n"
        "napari_mran.open_slide\n"
        "for m in ('tissue', 'results', 'model', 'analysis', 'synthetic', 'export', 'training', 'cohort'):\n"
        "    try:\n"
        "        __import__('napari_mran.' + m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != 'napari_mran.' + m: raise\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {GUI!r}]\n"
        "print(bad); assert not bad, bad\n"
        "napari_mran.cli.main(['--version'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "napari-mran" in r.stdout


def test_plain_import_is_light():
    r = subprocess.run([sys.executable, "-c",
                        "import sys, napari_mran; print('torch' in sys.modules, 'dask' in sys.modules)"],
                       capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr
