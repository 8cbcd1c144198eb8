"""Issue 10, train: a failed run never blocks the next one; --resume on a damaged or
hostile checkpoint is a clean error; --resume can extend --epochs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from napari_mran.cli import main
from napari_mran.synthetic import make_cohort
from slide_writers import write_svs_pyramid

FAST = ["--width", "0.0625", "--max-bags-per-slide", "1", "--folds", "3", "--batch-size", "2",
        "--workers", "2", "-q"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    labels = make_cohort(folder, 6, seed=4, width=2048, height=2048)
    return folder, labels


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    folder, labels = cohort
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
                 "--epochs", "1", *FAST]) == 0
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_a_failed_run_does_not_block_the_next(cohort, tmp_path, capsys):
    folder, labels = cohort
    glass = np.full((2048, 2048, 3), 245, np.uint8)  # no tissue anywhere
    for i in range(6):
        write_svs_pyramid(folder.parent / f"glass{i}.svs", glass, downsamples=(1, 4))
    blank = tmp_path / "blank.csv"
    blank.write_text("slide,label,case\n" + "".join(
        f"glass{i}.svs,{i % 2},g{i}\n" for i in range(6)))
    run = tmp_path / "run"
    assert main(["train", "--slides", str(folder.parent), "--labels", str(blank), "--out",
                 str(run), "--epochs", "1", *FAST]) == 2
    assert "no training slide has tissue bags" in _one_error_line(capsys)
    assert run.exists()  # the failed run left its options and splits ...
    # ... and the next run into the same folder simply starts (no --resume needed)
    assert main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
                 "--epochs", "1", *FAST]) == 0
    capsys.readouterr()
    assert (run / "model.safetensors").is_file() and (run / "checkpoint.pt").is_file()


def test_resume_extends_the_epochs(trained, cohort, tmp_path, capsys):
    import shutil

    folder, labels = cohort
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    base = ["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run), *FAST]
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    capsys.readouterr()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    assert main([*base, "--epochs", "1", "--resume"]) == 2
    assert "cannot shorten" in _one_error_line(capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "hostile", "not-ours"])
def test_resume_on_a_bad_checkpoint_is_a_clean_error(damage, trained, cohort, tmp_path, capsys):
    import shutil

    import torch

    folder, labels = cohort
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = run / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00\x01not a checkpoint" * 100)
    elif damage == "hostile":
        class Payload:
            def __reduce__(self):
                import os
                return (os.system, (f"touch {marker}",))
        ckpt.write_bytes(pickle.dumps({"model": Payload()}))
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    before = sorted(p.name for p in run.iterdir())
    rc = main(["train", "--slides", str(folder), "--labels", str(labels), "--out", str(run),
               "--epochs", "2", "--resume", *FAST])
    line = _one_error_line(capsys)
    assert rc == 2 and "checkpoint.pt" in line and "cannot resume" in line
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == before
