"""The downstream learning-rate schedule: the authors' MultiStepLR(milestones=[5], gamma=0.5),
halved once (not every 5 epochs), and exact across a resume."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch

from napari_mran._events import collect
from napari_mran.synthetic import make_cohort
from napari_mran.training import TrainConfig, train
from napari_mran.training.trainer import downstream_scheduler

torch.set_num_threads(min(2, torch.get_num_threads()))

BASE = 1e-4


def _optimizer():
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=BASE)


def _lrs(opt, sched, epochs):
    """The LR each epoch runs with; the scheduler steps once after each epoch (as in train)."""
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_halved_once_at_epoch_5():
    opt = _optimizer()
    lrs = _lrs(opt, downstream_scheduler(opt), 13)
    assert lrs == [BASE] * 5 + [BASE / 2] * 8  # epochs 0..4 base, 5..12 half (StepLR: 0.25x from 10)
    assert TrainConfig().step_lr_after == 5
    opt = _optimizer()
    assert _lrs(opt, downstream_scheduler(opt, 2), 6) == [BASE] * 2 + [BASE / 2] * 4


def test_resume_mid_run_gives_the_same_lrs():
    opt = _optimizer()
    sched = downstream_scheduler(opt)
    full = _lrs(opt, sched, 13)
    for stop in (3, 5, 7):
        opt = _optimizer()
        sched = downstream_scheduler(opt)
        first = _lrs(opt, sched, stop)
        buf = io.BytesIO()  # through torch.save / weights-only load, as the trainer's checkpoint
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        opt2 = _optimizer()
        sched2 = downstream_scheduler(opt2, saved_state=state["sched"])
        assert isinstance(sched2, torch.optim.lr_scheduler.MultiStepLR)
        opt2.load_state_dict(state["opt"])
        sched2.load_state_dict(state["sched"])
        assert first + _lrs(opt2, sched2, 13 - stop) == full, stop


def test_an_old_steplr_state_keeps_its_schedule():
    opt = _optimizer()
    old = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    _lrs(opt, old, 9)
    opt2 = _optimizer()
    sched = downstream_scheduler(opt2, saved_state=old.state_dict())
    opt2.load_state_dict(opt.state_dict())
    sched.load_state_dict(old.state_dict())
    assert _lrs(opt2, sched, 2) == [BASE / 2, BASE / 4]  # what the old run would have done


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return out, make_cohort(out, 6, seed=3, width=4096, height=2048)


def _lr_down(run):
    return [json.loads(x)["lr_downstream"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_trainer_records_the_schedule_and_resumes_it(cohort, tmp_path):
    slides, labels = cohort
    lr = 1e-3
    cfg = TrainConfig(epochs=3, width=0.0625, n_folds=3, workers=2, max_bags_per_slide=1, batch_size=2,
                      lr=lr, seed=5, step_lr_after=1)
    full = tmp_path / "full"
    collect(train(slides, labels, full, cfg))
    assert _lr_down(full) == pytest.approx([lr, lr / 2, lr / 2])  # StepLR(1) would give lr / 4 at the end
    ckpt = torch.load(full / "checkpoint.pt", weights_only=True)
    assert list(ckpt["sched_down"]["milestones"]) == [1]

    part = tmp_path / "part"
    gen = train(slides, labels, part, cfg)
    epochs_done = 0
    for ev in gen:
        if ev.stage == "epoch":
            epochs_done += 1
            if epochs_done == 2:
                break
    gen.close()
    old = tmp_path / "old"
    shutil.copytree(part, old)
    collect(train(slides, labels, part, cfg, resume=True))
    assert _lr_down(part) == _lr_down(full)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k

    # a run started before this change: StepLR state, no init_backbone option saved
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _lrs(opt, step, 2)
    state["sched_down"] = step.state_dict()
    state["opt_down"]["param_groups"][0]["lr"] = lr / 4
    del state["init_backbone"]
    torch.save(state, old / "checkpoint.pt")
    saved = json.loads((old / "train_config.json").read_text())
    del saved["init_backbone"]
    (old / "train_config.json").write_text(json.dumps(saved))
    events, _ = collect(train(slides, labels, old, cfg, resume=True))
    assert any("older downstream schedule" in e.message for e in events)
    assert _lr_down(old) == pytest.approx([lr, lr / 2, lr / 4])
