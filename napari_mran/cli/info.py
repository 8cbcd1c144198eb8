"""``napari-mran info SLIDE...``: what a slide holds."""

from __future__ import annotations

import argparse
import json

from ._common import positive_float


def register(sub) -> None:
    p = sub.add_parser("info", help="print what a slide holds (levels, MPP, vendor)")
    p.add_argument("slides", nargs="+")
    p.add_argument("--mpp", type=positive_float, default=None, help="override µm/px of level 0")
    p.add_argument("--json", action="store_true",
                   help="one JSON document: an object for one slide, an array for several")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..slide import open_slide

    docs = []
    for path in args.slides:
        with open_slide(path, mpp=args.mpp) as slide:
            if not args.json:
                print(slide.summary())
                continue
            docs.append({
                "path": slide.path, "vendor": slide.vendor,
                "level_dimensions": slide.level_dimensions,
                "level_downsamples": slide.level_downsamples,
                "mpp": slide.mpp, "mpp_source": slide.mpp_source,
                "objective_power": slide.objective_power,
                "associated_images": list(slide.associated_images),
                "warnings": slide.warnings,
            })
    if args.json:
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    return 0
