"""Initialising MRAN's ResNet-18 trunk from a torchvision-layout state dict file.

torchvision itself does not import with this torch, so the torchvision-layout files are
made here from our own trunk by renaming its keys (conv1, bn1, layerL.B.*,
layerL.0.downsample.0/1, plus an fc head that must be ignored).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex

import pytest
import torch

from napari_mran._events import collect as drain
from napari_mran.errors import CheckpointError
from napari_mran.model import MRAN, MRANConfig, ResNetTrunk, init_backbone_from, load_model
from napari_mran.synthetic import make_cohort
from napari_mran.training import TrainConfig, train

torch.set_num_threads(min(2, torch.get_num_threads()))


def _torchvision_name(ours: str) -> str:
    """Our trunk key -> torchvision resnet18 key (written independently of the code under test)."""
    name = ours.replace("stem_conv.", "conv1.").replace("stem_bn.", "bn1.")
    name = name.replace(".proj.conv.", ".downsample.0.").replace(".proj.bn.", ".downsample.1.")
    return re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m.group(1)) + 1}.", name)


def _source_trunk(width: float, seed: int) -> ResNetTrunk:
    torch.manual_seed(seed)
    trunk = ResNetTrunk(width)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.num_batches_tracked.fill_(17)
    return trunk.eval()


def _torchvision_state(trunk: ResNetTrunk, n_fc: int = 1000) -> dict[str, torch.Tensor]:
    state = {_torchvision_name(k): v.clone() for k, v in trunk.state_dict().items()}
    state["fc.weight"] = torch.randn(n_fc, trunk.out_channels)
    state["fc.bias"] = torch.zeros(n_fc)
    return state


@pytest.fixture(scope="module")
def width1_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tv")
    source = _source_trunk(1.0, seed=80)
    state = _torchvision_state(source)
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias", "layer3.0.downsample.1.running_mean", "fc.weight"} <= set(state)
    assert len(state) == 120 + 2  # resnet18: 120 trunk entries (with num_batches_tracked) + fc
    path = folder / "resnet18.pth"
    torch.save(state, path)
    return path, source


def test_weights_land_in_the_trunk_and_nothing_else(width1_file):
    path, source = width1_file
    torch.manual_seed(0)
    model = MRAN(MRANConfig(width=1.0)).eval()
    classifier = model.upstream.classifier.weight.clone()
    downstream = {k: v.clone() for k, v in model.downstream.state_dict().items()}
    digest = init_backbone_from(model, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    src = source.state_dict()
    for key, value in model.upstream.trunk.state_dict().items():
        assert torch.equal(value, src[key]), key
    assert torch.equal(model.upstream.classifier.weight, classifier)  # fc.* ignored, classifier untouched
    for key, value in model.downstream.state_dict().items():
        assert torch.equal(value, downstream[key])
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        assert torch.equal(model.upstream.trunk(x), source(x))


def test_accepts_branch_or_trunk_safetensors_and_no_batch_counters(tmp_path):
    from safetensors.torch import save_file

    source = _source_trunk(0.25, seed=81)
    state = {k: v for k, v in _torchvision_state(source, n_fc=10).items() if "num_batches_tracked" not in k}
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = MRAN(MRANConfig(width=0.25))
    for target in (model.upstream, model.upstream.trunk, ResNetTrunk(0.25)):
        assert init_backbone_from(target, path) == hashlib.sha256(path.read_bytes()).hexdigest()
        trunk = getattr(target, "trunk", target)
        assert torch.equal(trunk.stages[1][0].proj.conv.weight, source.stages[1][0].proj.conv.weight)
    with pytest.raises(TypeError):
        init_backbone_from(torch.nn.Linear(2, 2), path)


def test_width_mismatch_is_refused_with_the_key_named(width1_file):
    path, _ = width1_file
    model = MRAN(MRANConfig(width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        init_backbone_from(model, path)
    msg = str(info.value)
    assert "conv1.weight: expected shape (8, 3, 7, 7), got (64, 3, 7, 7)" in msg, msg
    assert "width 0.125" in msg and path.name in msg
    for key, value in model.state_dict().items():  # nothing copied
        assert torch.equal(value, before[key]), key


def test_key_and_value_problems_are_named(tmp_path):
    source = _source_trunk(0.125, seed=82)
    good = _torchvision_state(source, n_fc=3)
    cases = {}
    missing = dict(good)
    del missing["layer3.1.bn2.running_var"]
    cases["missing"] = (missing, ["missing keys", "layer3.1.bn2.running_var"])
    extra = {**good, "layer5.0.conv1.weight": torch.zeros(1)}
    cases["extra"] = (extra, ["unexpected keys", "layer5.0.conv1.weight"])
    ours = {k: v for k, v in source.state_dict().items()}  # our own names: not torchvision layout
    cases["ours"] = (ours, ["missing keys", "bn1.running_mean", "unexpected keys", "napari-mran's trunk names"])
    shape = {**good, "layer2.0.conv1.weight": torch.zeros(16, 8, 5, 5)}
    cases["shape"] = (shape, ["layer2.0.conv1.weight: expected shape (16, 8, 3, 3), got (16, 8, 5, 5)"])
    nan = dict(good)
    nan["layer1.1.bn1.weight"] = torch.full_like(nan["layer1.1.bn1.weight"], float("nan"))
    cases["nan"] = (nan, ["NaN", "layer1.1.bn1.weight"])
    cases["notdict"] = ([1, 2, 3], ["state dict"])
    for name, (state, needles) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(CheckpointError) as info:
            init_backbone_from(ResNetTrunk(0.125), path)
        msg = str(info.value)
        assert path.name in msg and all(n in msg for n in needles), (name, msg)
    with pytest.raises(CheckpointError, match="no such file"):
        init_backbone_from(ResNetTrunk(0.125), tmp_path / "absent.pth")


class _Shell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_hostile_file_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    state = _torchvision_state(_source_trunk(0.125, seed=83), n_fc=3)
    state["fc.bias"] = _Shell(marker)
    path = tmp_path / "evil.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        init_backbone_from(ResNetTrunk(0.125), path)
    assert "evil.pth" in str(info.value)
    assert not marker.exists()


def test_trainer_applies_and_records_the_initialisation(tmp_path):
    slides = tmp_path / "slides"
    labels = make_cohort(slides, 6, seed=3, width=4096, height=2048)
    source = _source_trunk(0.0625, seed=84)
    path = tmp_path / "init.pth"
    torch.save(_torchvision_state(source, n_fc=5), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # lr 0: the convolution weights stay what the file held (BN running stats still update)
    cfg = TrainConfig(epochs=1, width=0.0625, n_folds=3, workers=2, max_bags_per_slide=1, batch_size=2,
                      lr=0.0, seed=5, init_backbone=str(path))
    run = tmp_path / "run"
    drain(train(slides, labels, run, cfg))
    model = load_model(run / "model.safetensors")
    prov = model.config.provenance
    assert prov["init_backbone"] == {"path": str(path.resolve()), "sha256": digest}
    assert prov["train_config"]["init_backbone"] == str(path)
    assert json.loads((run / "train_config.json").read_text())["init_backbone"] == str(path)
    assert torch.equal(model.upstream.trunk.stem_conv.weight, source.stem_conv.weight)
    assert torch.equal(model.upstream.trunk.stages[3][1].conv2.weight, source.stages[3][1].conv2.weight)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert json.loads(ckpt["init_backbone"])["sha256"] == digest
    # a file that does not fit is refused before the run folder is made
    bad = tmp_path / "bad-run"
    with pytest.raises(CheckpointError, match="conv1.weight"):
        drain(train(slides, labels, bad, TrainConfig(**{**cfg.__dict__, "width": 0.125})))
    assert not bad.exists()


def test_cli_train_init_backbone_refuses_a_misfit_before_the_run_folder(width1_file, tmp_path,
                                                                        capsys):
    from napari_mran.cli import main

    path, _ = width1_file
    slides = tmp_path / "slides"
    labels = make_cohort(slides, 6, seed=1, width=2048, height=2048)
    run = tmp_path / "run"
    rc = main(["train", "--slides", str(slides), "--labels", str(labels), "--out", str(run),
               "--width", "0.125", "--epochs", "1", "--folds", "3", "--init-backbone", str(path),
               "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "width" in err
    assert not run.exists()
