"""``napari-mran tcga-labels FOLDER --out labels.csv``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("tcga-labels", help="labels.csv from a folder of TCGA slide files "
                       "(case = barcode[:12]; sample type 01-09 tumour, 10-19 normal)")
    p.add_argument("folder", help="folder of TCGA slides (sub-folders searched, as GDC lays "
                   "them out)")
    p.add_argument("--out", required=True, help="labels CSV to write (slide,label,case)")
    p.add_argument("--no-recursive", action="store_true", help="only the folder itself")
    p.add_argument("--tumour-label", type=int, default=1, help="label of tumour samples")
    p.add_argument("--normal-label", type=int, default=0, help="label of normal samples")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..tcga import tcga_labels, write_labels_csv

    res = tcga_labels(args.folder, recursive=not args.no_recursive,
                      tumour_label=args.tumour_label, normal_label=args.normal_label)
    path = write_labels_csv(res, args.out, overwrite=args.overwrite)  # errors carry the report
    print(res.report(), file=sys.stderr)
    print(json.dumps({"labels": str(path), **res.counts()}, indent=2))
    return 0
