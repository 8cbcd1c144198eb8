"""What every ``napari-mran`` command shares: one-line errors, argument types that
validate, the analysis options (defined once, spelled the same on every command that
analyses), the progress renderer, the model argument and the output folder."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, NoReturn

from ..errors import MRANError
from ..vocab import AMP_MODES, EDGE_POLICIES, STAIN_NORMALIZATIONS, TISSUE_METHODS, parse_device

#: exit status: ok, some slides failed (the rest was written), bad input, interrupted
EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

DEMO_NOTE = ("the bundled demo model was trained on synthetic slides: its output is a "
             "demonstration, not a diagnosis")


class UsageError(MRANError):
    """A bad command line: exit 2 with one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: <what>``) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --------------------------------------------------------------------------- types
def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def batch_size(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else int_at_least(1)(text)


def device(text: str) -> str:
    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------------- options
def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="M",
                   help="required: a checkpoint (.safetensors or a reference .pth), or 'demo' "
                        "(the bundled demo model, trained on synthetic slides: not for "
                        "diagnosis)")


#: the options of every command that analyses slides (analyze, predict, evaluate):
#: (flags, argparse keywords), added in this order
ANALYSIS_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--device",), dict(type=device, default="auto",
                         help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps (default: auto)")),
    (("--batch-size",), dict(type=batch_size, default="auto", metavar="N|auto",
                             help="bags per forward pass (default: auto; halved on CUDA "
                                  "out-of-memory)")),
    (("--amp",), dict(choices=AMP_MODES, default="auto",
                      help="reduced precision: auto = bf16/fp16 autocast on CUDA only")),
    (("--bag-um",), dict(type=positive_float, default=None, metavar="UM",
                         help="bag side in µm (needs the slides' MPP); default: the model's "
                              "bag in px")),
    (("--tissue", "--tissue-method"), dict(
        dest="tissue", choices=TISSUE_METHODS, default="reference",
        help="tissue rule: reference (default; the authors' white rule at <= 4x on candidate "
             "bags), exact (the same rule on level 0 for every bag) or otsu")),
    (("--edge",), dict(choices=EDGE_POLICIES, default="pad",
                       help="partial bags at the right/bottom edges: pad (default: analysed, "
                            "white outside the slide) or drop (the authors' rule)")),
    (("--mpp",), dict(type=positive_float, default=None,
                      help="override the µm/px of level 0 of every slide")),
    (("--max-failed-fraction",), dict(type=fraction, default=None, metavar="F",
                                      help="fail a slide when more than this fraction of its "
                                           "bags cannot be decoded (default 0.1)")),
    (("--stain-normalize",), dict(choices=STAIN_NORMALIZATIONS, default="off",
                                  help="normalise each bag's stains before the model: off "
                                       "(default), macenko, reinhard; to --stain-reference, "
                                       "else the model's training cohort, else the built-in "
                                       "H&E reference; macenko unmixes the stains (use it "
                                       "when the stains or scanner changed), reinhard only "
                                       "matches colour statistics (docs/stain.md)")),
    (("--stain-reference",), dict(default=None, metavar="FILE",
                                  help="the stain reference for --stain-normalize: a JSON "
                                       "reference, a PNG/JPEG/TIFF region or a slide (its "
                                       "smallest level)")),
    (("--allow-non-brightfield",), dict(action="store_true",
                                        help="analyse slides that fail the brightfield H&E "
                                             "check (recorded in provenance)")),
]


#: the region-of-interest options (docs/roi.md): analyze adds --roi, predict --roi-dir
ROI_CLASS_OPTION: tuple[tuple[str, ...], dict[str, Any]] = (
    ("--roi-class",), dict(action="append", default=None, metavar="NAME",
                           help="only annotations of this QuPath class (repeatable, or a "
                                "comma-separated list; '(unclassified)' for unclassified "
                                "ones)"))


def add_roi_options(p: argparse.ArgumentParser, *, per_slide: bool) -> None:
    """``--roi FILE`` (analyze) or ``--roi-dir DIR`` + ``--roi-missing`` (predict), and
    ``--roi-class``."""
    g = p.add_argument_group("region of interest (docs/roi.md)")
    if per_slide:
        g.add_argument("--roi-dir", default=None, metavar="DIR",
                       help="analyse each slide only inside DIR/<slide stem>.geojson (or "
                            ".json): QuPath annotations in level-0 pixels")
        g.add_argument("--roi-missing", choices=("error", "whole"), default="error",
                       help="a slide without a region file: error (default, before any "
                            "slide is analysed) or whole (analyse it whole)")
    else:
        g.add_argument("--roi", default=None, metavar="FILE",
                       help="analyse only the bags inside the region: a GeoJSON file of "
                            "polygons in level-0 pixels (QuPath's annotation export)")
    add_options(g, [ROI_CLASS_OPTION])


def roi_classes(args: argparse.Namespace) -> list[str]:
    """``--roi-class`` values, commas split; an error when given without a region."""
    given = [c.strip() for v in (getattr(args, "roi_class", None) or []) for c in v.split(",")]
    given = [c for c in given if c]
    if given and not (getattr(args, "roi", None) or getattr(args, "roi_dir", None)):
        raise UsageError("--roi-class needs --roi FILE (analyze) or --roi-dir DIR (predict)")
    return given


def add_options(p: Any, options: list[tuple[tuple[str, ...], dict[str, Any]]]) -> None:
    """Add (flags, keywords) option definitions to a parser or argument group."""
    for flags, kwargs in options:
        p.add_argument(*flags, **kwargs)


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that analyses slides (analyze, predict, evaluate)."""
    add_options(p.add_argument_group("analysis options"), ANALYSIS_OPTIONS)


def add_command(sub: Any, name: str, summary: str, description: str | None = None
                ) -> argparse.ArgumentParser:
    """A subcommand parser (one-line errors like the main parser)."""
    return sub.add_parser(name, help=summary, description=description or summary)


def add_output_options(p: argparse.ArgumentParser, *, overwrite_help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (failures are still reported)")


def _stain_reference(args: argparse.Namespace) -> str | None:
    """``--stain-reference``, read and fitted now: a bad file is a one-line error before
    anything is analysed."""
    path = getattr(args, "stain_reference", None)
    if path is None:
        return None
    if args.stain_normalize == "off":
        raise UsageError("--stain-reference needs --stain-normalize macenko or reinhard")
    from ..stain.user import read_stain_reference

    try:
        read_stain_reference(path, args.stain_normalize)
    except ValueError as exc:
        raise UsageError(f"--stain-reference {exc}") from None
    return str(path)


def analysis_options(args: argparse.Namespace) -> Any:
    """The :class:`~napari_mran.inference.AnalysisOptions` of the parsed options."""
    from ..inference import AnalysisOptions

    try:
        return AnalysisOptions.from_mapping({
            "device": args.device, "batch_size": args.batch_size, "amp": args.amp,
            "bag_um": args.bag_um, "tissue_method": args.tissue, "edge": args.edge,
            "mpp": args.mpp, "max_failed_fraction": args.max_failed_fraction,
            "allow_non_brightfield": args.allow_non_brightfield,
            "stain_normalize": args.stain_normalize,
            "stain_reference": _stain_reference(args)})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def model_spec(args: argparse.Namespace) -> str:
    """``--model``; a clear error when it is missing (never a silent demo); warns for the
    demo model."""
    spec = getattr(args, "model", None)
    if not spec:
        raise UsageError("--model is required: a checkpoint file (.safetensors or a "
                         "reference .pth), or '--model demo' for the bundled synthetic demo "
                         "model (not for diagnosis)")
    if spec == "demo":
        print(f"warning: --model demo: {DEMO_NOTE}", file=sys.stderr)
    return spec


def make_out_dir(out: Path) -> None:
    """Create the output folder (and parents); a clear error when it cannot be made or
    written."""
    import os

    from ..errors import ResultsError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"{out}: cannot create the output folder "
                           f"({exc.strerror or type(exc).__name__})") from None
    if not os.access(out, os.W_OK):
        raise ResultsError(f"{out}: the output folder is not writable")


def print_json(obj: Any) -> None:
    from ..results import strict_json

    clean, _ = strict_json(obj)
    print(json.dumps(clean, indent=2, allow_nan=False))


# --------------------------------------------------------------------------- progress
class Progress:
    """Progress on stderr: a tqdm bar (counted work on a terminal), a rewritten line
    (other work on a terminal) or plain lines (not a terminal).  Quiet: nothing but
    ``important`` lines."""

    def __init__(self, quiet: bool = False, *, total: int | None = None, desc: str = "",
                 unit: str = "slide") -> None:
        self.quiet, self.tty, self.bar = quiet, sys.stderr.isatty(), None
        if not quiet and self.tty and total is not None:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def line(self, text: str, final: bool = False, important: bool = False) -> None:
        if self.quiet and not important:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.tty and not final:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def count(self, done: int, total: int, message: str, important: bool = False) -> None:
        if self.bar is None:
            self.line(f"[{done}/{total}] {message}", final=True, important=important)
            return
        if self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(message[-60:], refresh=False)
        self.bar.refresh()
        if important:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def drain(gen: Generator[Any, None, Any], show: Callable[[Any], None]) -> Any:
    """Run a progress generator to its return value, showing each event; closes it on
    any exception (Ctrl-C included) so that it cleans up."""
    from .._events import drain as _drain

    try:
        return _drain(gen, show)
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
