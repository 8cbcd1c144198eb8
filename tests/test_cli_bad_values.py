"""Issue 10: every bad value on the command line is exit 2, one line on stderr, nothing
written; options have one spelling on every command that analyses."""

from __future__ import annotations

import json

import pytest

from napari_mran.cli import main
from napari_mran.synthetic import make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    labels = make_cohort(folder, 6, seed=2, width=2048, height=2048)
    return folder, labels


def _bad(argv, capsys, out):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
    return err[0]


ANALYSIS_BAD = [
    (["--device", "quantum"], "--device"),
    (["--batch-size", "abc"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--amp", "fp8"], "--amp"),
    (["--tissue", "magic"], "--tissue"),
    (["--edge", "crop"], "--edge"),
    (["--bag-um", "-5"], "--bag-um"),
    (["--mpp", "0"], "--mpp"),
    (["--max-failed-fraction", "2"], "--max-failed-fraction"),
    (["--device", "cuda:x"], "--device"),
]


@pytest.mark.parametrize("extra, option", ANALYSIS_BAD)
@pytest.mark.parametrize("command", ["analyze", "predict", "evaluate"])
def test_analysis_options_are_validated_alike(command, extra, option, cohort, tmp_path, capsys):
    folder, labels = cohort
    out = tmp_path / "out"
    if command == "evaluate":
        argv = ["evaluate", "--model", "demo", "--slides", str(folder), "--labels", str(labels)]
    else:
        argv = [command, str(folder / "slide_0000.svs"), "--model", "demo"]
    line = _bad([*argv, "--out", str(out), *extra], capsys, out)
    assert option in line


TRAIN_BAD = [
    (["--width", "0"], "--width"),
    (["--lr", "-1"], "--lr"),
    (["--device", "quantum"], "--device"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--folds", "1"], "--folds"),
    (["--bag-px", "16"], "--bag-px"),
    (["--workers", "0"], "--workers"),
    (["--tissue", "magic"], "--tissue"),
]


@pytest.mark.parametrize("extra, option", TRAIN_BAD)
def test_train_validates_before_the_run_folder(extra, option, cohort, tmp_path, capsys):
    folder, labels = cohort
    out = tmp_path / "run"
    line = _bad(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(out),
                 *extra], capsys, out)
    assert option in line
    assert not out.exists()


def test_train_labels_outside_the_classes(cohort, tmp_path, capsys):
    folder, labels = cohort
    bad = tmp_path / "labels.csv"
    bad.write_text(labels.read_text().replace(",1,", ",7,", 1))
    out = tmp_path / "run"
    line = _bad(["train", "--slides", str(folder), "--labels", str(bad), "--out", str(out),
                 "--class-names", "normal,tumour"], capsys, out)
    assert "7" in line and not out.exists()


def test_unknown_option_and_missing_value_are_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    _bad(["analyze", "x.svs", "--model", "demo", "--out", str(out), "--frobnicate"], capsys, out)
    _bad(["analyze", "x.svs", "--model", "demo", "--out"], capsys, out)
    _bad(["no-such-command"], capsys, out)


@pytest.mark.parametrize("command", ["analyze", "predict", "evaluate"])
def test_one_spelling_on_every_analysing_command(command, capsys):
    """--tissue, --device, --batch-size, --amp, --edge, --max-failed-fraction,
    --allow-non-brightfield, -q/--quiet and --json on analyze, predict and evaluate."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tissue", "--device", "--batch-size", "--amp", "--edge",
                   "--max-failed-fraction", "--allow-non-brightfield", "--quiet", "--json",
                   "--mpp", "--bag-um", "--overwrite"):
        assert option in text, (command, option)


def test_analyze_json_summary(cohort, tmp_path, capsys):
    folder, _ = cohort
    assert main(["analyze", str(folder / "slide_0000.svs"), "--model", "demo", "--out",
                 str(tmp_path / "o"), "--export", "", "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["slides"][0]["bags"] >= 1 and doc["slides"][0]["model"]["demo"] is True
