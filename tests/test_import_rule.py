"""The headless core never imports napari, Qt or magicgui (GPU nodes have no display)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "napari_mran"
GUI = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt")
QT = GUI[1:]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_core_modules_do_not_import_gui_packages():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        banned = QT if rel.parts[0] == "_napari" else GUI
        if rel.parts[0] == "_napari" and rel.name.startswith("_widget"):
            continue  # widget modules are the only place Qt/magicgui may be imported
        bad = _imports(path) & set(banned)
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders


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
