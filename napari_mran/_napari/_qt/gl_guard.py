"""A guard against a crash of Mesa's software OpenGL when napari layers are removed.

With napari 0.9.2 / vispy 0.17 on Mesa 22.3's llvmpipe and softpipe (what a VM, a
remote desktop or Xvfb without a GPU gives), deleting the GL program of a removed layer
while an RGB image is shown makes a later draw segfault in ``glDrawArrays``: napari
dies.  The plugin removes layers itself (a cancelled analysis, a result replaced by a
new one), and the user removes them too, so it keeps the programs alive instead, only
on those software renderers: each removed layer then leaks a few KB of the software
driver's memory, instead of a crash.  docs/gui.md ("Known problems") has a reproduction
with napari alone.

Set ``NAPARI_MRAN_SOFTWARE_GL_WORKAROUND=0`` to leave vispy untouched.
"""

from __future__ import annotations

import os

#: Substrings of GL_RENDERER that mark a software rasteriser with the crash.
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast")
ENV = "NAPARI_MRAN_SOFTWARE_GL_WORKAROUND"

_state: dict = {"installed": False, "renderer": None, "kept": 0}


def is_software_renderer(renderer: str | None) -> bool:
    return bool(renderer) and any(s in renderer.lower() for s in SOFTWARE_RENDERERS)


def install() -> bool:
    """Wrap vispy's program deletion once per process (no-op when switched off).

    The renderer is looked up the first time a program is deleted (a GL context is
    current then); on hardware renderers programs are deleted as before.
    Returns whether the guard is installed.
    """
    if _state["installed"]:
        return True
    if os.environ.get(ENV, "1").strip().lower() in ("0", "no", "off", "false"):
        return False
    try:
        from vispy.gloo import gl, glir
    except ImportError:  # pragma: no cover - napari always brings vispy
        return False
    original = glir.GlirProgram.delete

    def delete(self):
        renderer = _state["renderer"]
        if renderer is None:
            try:
                renderer = str(gl.glGetParameter(gl.GL_RENDERER))
            except Exception:  # noqa: BLE001 - no current context: assume hardware
                renderer = ""
            _state["renderer"] = renderer
        if is_software_renderer(renderer):
            _state["kept"] += 1  # kept alive: see the module docstring
            return None
        return original(self)

    delete.__wrapped__ = original  # type: ignore[attr-defined]
    glir.GlirProgram.delete = delete
    _state["installed"] = True
    return True


def status() -> dict:
    """What the guard saw: installed, the GL renderer (once known), programs kept."""
    return dict(_state)
