"""``napari-mran`` command line: a thin front end over the headless core.

Every subcommand returns an exit status; errors print ``error: <file>: <reason>``
to stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import MRANError


def _cmd_info(args) -> int:
    from .slide import open_slide

    for path in args.slides:
        with open_slide(path, mpp=args.mpp) as slide:
            if args.json:
                print(json.dumps({
                    "path": slide.path, "vendor": slide.vendor,
                    "level_dimensions": slide.level_dimensions,
                    "level_downsamples": slide.level_downsamples,
                    "mpp": slide.mpp, "mpp_source": slide.mpp_source,
                    "objective_power": slide.objective_power,
                    "associated_images": list(slide.associated_images),
                    "warnings": slide.warnings,
                }, indent=2))
            else:
                print(slide.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="napari-mran", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"napari-mran {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print what a slide holds (levels, MPP, vendor)")
    info.add_argument("slides", nargs="+")
    info.add_argument("--mpp", type=float, default=None, help="override µm/px of level 0")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MRANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
