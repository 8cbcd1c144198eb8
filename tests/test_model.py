"""Tests of napari_mran.model: architecture, attention, reference import, checkpoints, losses.

Everything is computed for real (no mocks). Models are small (width 0.125-0.25) except
where the published geometry itself is under test (width 1: parameter count, one bag
forward, reference equivalence).
"""

from __future__ import annotations

import builtins
import dataclasses
import math
import os
import pickle
import random
import shlex
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_mran.errors import CheckpointError, OutputExistsError
from napari_mran.model import (
    DEMO_MODEL_PATH,
    MRAN,
    BagOutput,
    MRANConfig,
    SlideOutput,
    attention_from_norms,
    class_weights_from_counts,
    downstream_loss,
    load_model,
    ramp,
    save_model,
    sha256_of,
    upstream_loss,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

ATOL = RTOL = 1e-5


def _bags(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 1024, 1024, generator=gen)


def _small_model(width: float = 0.25, n_classes: int = 2, seed: int = 0, **cfg) -> MRAN:
    torch.manual_seed(seed)
    model = MRAN(MRANConfig(n_classes=n_classes, width=width, **cfg))
    _randomise_bn(model, seed)
    return model.eval()


def _randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics (so that importing them matters)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))


# ======================================================================================
# An independent, deliberately plain reference implementation (spec sections 2-3),
# with the reference code's module names (spec section 6).
# ======================================================================================
class RefBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class RefUpstream(nn.Module):
    def __init__(self, widths, n_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(RefBlock(cin, w, stride), RefBlock(w, w, 1)))
            cin = w
        self.linear = nn.Linear(widths[-1], n_classes)

    def features(self, patch):  # (1, 3, 128, 128) -> (1, E, 4, 4)
        y = F.max_pool2d(F.relu(self.bn1(self.conv1(patch))), 3, 2, 1)
        for i in range(1, 5):
            y = getattr(self, f"layer{i}")(y)
        return y


class RefDownstream(nn.Module):
    def __init__(self, dim, hidden, n_classes):
        super().__init__()
        self.linear0 = nn.Linear(dim, hidden)
        self.linear1 = nn.Linear(hidden, n_classes)


class RefMRAN(nn.Module):
    def __init__(self, width=1.0, n_classes=2, hidden=32):
        super().__init__()
        widths = [int(round(b * width)) for b in (64, 128, 256, 512)]
        self.upstream = RefUpstream(widths, n_classes)
        self.downstream = RefDownstream(widths[-1], hidden, n_classes)


def _plain_attention(norms: list[torch.Tensor], thr: float) -> list[torch.Tensor]:
    total = sum(norms)
    a = [v / total for v in norms]
    a = [torch.clamp(v - thr / len(norms), min=0.0) for v in a]
    total = sum(a)
    return [v / total for v in a]


def plain_patch_maps(ref: RefMRAN, bag: torch.Tensor) -> list[torch.Tensor]:
    """Cut the 64 patches with explicit loops (p = row * 8 + col); (E, 4, 4) map of each.

    The patches are evaluated as one batch for speed; in eval mode BatchNorm uses running
    statistics, so this is the same as one patch at a time.
    """
    patches = [bag[:, row * 128:(row + 1) * 128, col * 128:(col + 1) * 128] for row in range(8) for col in range(8)]
    maps = ref.upstream.features(torch.stack(patches))
    return [maps[p] for p in range(64)]


def plain_bag(ref: RefMRAN, bag: torch.Tensor, thr: float = 0.1, top_k: int | None = None,
              maps: list[torch.Tensor] | None = None) -> dict:
    """One bag (3, 1024, 1024), explicit loops over patches and cells."""
    up = ref.upstream
    W, b = up.linear.weight, up.linear.bias
    maps = plain_patch_maps(ref, bag) if maps is None else maps
    embs, plogits, betas, clogits = [], [], [], []
    for fmap in maps:
        cells = [fmap[:, i, j] for i in range(4) for j in range(4)]
        beta = _plain_attention([torch.sqrt((c * c).sum()) for c in cells], thr)
        e = sum(beta[k] * cells[k] for k in range(16))
        embs.append(e)
        plogits.append(W @ e + b)
        betas.append(torch.stack(beta))
        clogits.append(torch.stack([W @ c + b for c in cells]))
    norms = [torch.sqrt((z * z).sum()) for z in plogits]
    if top_k is None:
        alpha = _plain_attention(norms, thr)
    else:  # keep the k largest, no threshold, renormalise over them
        order = sorted(range(64), key=lambda p: float(norms[p]), reverse=True)[:top_k]
        total = sum(norms[p] for p in order)
        alpha = [norms[p] / total if p in order else torch.zeros_like(total) for p in range(64)]
    g = sum(alpha[p] * embs[p] for p in range(64))
    return dict(bag_logits=W @ g + b, embedding=g, alpha=torch.stack(alpha), patch_logits=torch.stack(plogits),
                beta=torch.stack(betas), cell_logits=torch.stack(clogits))


def plain_slide(ref: RefMRAN, embeddings: torch.Tensor, thr: float = 0.1) -> dict:
    down = ref.downstream
    hs = [down.linear0.weight @ g + down.linear0.bias for g in embeddings]
    us = [down.linear1.weight @ h + down.linear1.bias for h in hs]
    gamma = _plain_attention([torch.sqrt((u * u).sum()) for u in us], thr)
    s = sum(gamma[i] * hs[i] for i in range(len(hs)))
    return dict(slide_logits=down.linear1.weight @ s + down.linear1.bias, gamma=torch.stack(gamma),
                bag_logits=torch.stack(us), hidden=torch.stack(hs))


def _random_ref(width: float, n_classes: int, seed: int, he_init: bool = False) -> RefMRAN:
    torch.manual_seed(seed)
    ref = RefMRAN(width, n_classes)
    _randomise_bn(ref, seed)
    with torch.no_grad():  # optional He init (livelier, more varied features); non-default linear biases
        for m in ref.modules():
            if he_init and isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for lin in (ref.upstream.linear, ref.downstream.linear0, ref.downstream.linear1):
            lin.bias.normal_(0, 0.5)
    return ref.eval()


def _assert_bag_equal(out: BagOutput, ref: list[dict]) -> None:
    for name in BagOutput._fields:
        expected = torch.stack([r[name] for r in ref])
        torch.testing.assert_close(getattr(out, name), expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def _assert_slide_equal(out: SlideOutput, ref: dict) -> None:
    for name in SlideOutput._fields:
        torch.testing.assert_close(getattr(out, name), ref[name], atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


# ======================================================================================
# Architecture and geometry
# ======================================================================================
def _analytic_trunk_params(widths) -> int:
    """ResNet-18 trunk parameters: convs (no bias) + BN (weight, bias) + 1x1 projections."""
    total = 3 * widths[0] * 7 * 7 + 2 * widths[0]
    cin = widths[0]
    for i, w in enumerate(widths):
        for blk in range(2):
            c_in = cin if blk == 0 else w
            total += 9 * c_in * w + 9 * w * w + 2 * (2 * w)
            if blk == 0 and (i > 0 or c_in != w):
                total += c_in * w + 2 * w
        cin = w
    return total


def test_default_geometry_and_parameter_count():
    model = MRAN()
    cfg = model.config
    assert (cfg.n_classes, cfg.width, cfg.hidden, cfg.threshold) == (2, 1.0, 32, 0.1)
    assert (cfg.bag_px, cfg.input_px, cfg.patch_px, cfg.grid, cfg.cell_grid) == (2048, 1024, 128, 8, 4)
    assert (cfg.n_patches, cfg.n_cells, cfg.embedding_dim) == (64, 16, 512)
    assert model.upstream.trunk.widths == (64, 128, 256, 512)
    trunk = sum(p.numel() for p in model.upstream.trunk.parameters())
    assert trunk == _analytic_trunk_params((64, 128, 256, 512)) == 11_176_512  # torchvision resnet18 minus fc
    assert sum(p.numel() for p in model.upstream.classifier.parameters()) == 512 * 2 + 2
    assert sum(p.numel() for p in model.downstream.parameters()) == (512 * 32 + 32) + (32 * 2 + 2)
    # stem layout of the spec
    stem = model.upstream.trunk.stem_conv
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((7, 7), (2, 2), (3, 3), None)
    pool = model.upstream.trunk.stem_pool
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    # a 128 px patch gives a 512 x 4 x 4 map
    with torch.inference_mode():
        assert model.eval().upstream.trunk(torch.rand(1, 3, 128, 128)).shape == (1, 512, 4, 4)
    # width multiplier: widths round(64 w), ...; hidden stays 32
    small = MRAN(MRANConfig(width=0.3))
    assert small.upstream.trunk.widths == (19, 38, 77, 154) and small.embedding_dim == 154
    assert sum(p.numel() for p in small.upstream.trunk.parameters()) == _analytic_trunk_params((19, 38, 77, 154))
    assert small.downstream.to_hidden.out_features == 32


def test_attention_properties_c3_and_channels_last():
    model = _small_model(width=0.125, n_classes=3)
    x = _bags(2, seed=1)
    with torch.inference_mode():
        out = model.forward_bags(x)
        out_cl = model.forward_bags(x[:1].contiguous(memory_format=torch.channels_last))
    assert out.bag_logits.shape == (2, 3) and out.embedding.shape == (2, 64)
    assert out.patch_logits.shape == (2, 64, 3) and out.cell_logits.shape == (2, 64, 16, 3)
    for att, n in ((out.alpha, 64), (out.beta, 16)):
        assert att.shape[-1] == n and (att >= 0).all()
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]))
    for a, b in zip(out, out_cl):  # float32 conv kernels differ between layouts: ~1e-5 noise
        torch.testing.assert_close(a[:1], b, atol=1e-4, rtol=1e-4)
    # in float64 the layout makes no difference beyond rounding
    model64, x64 = model.double(), x[:1].double()
    with torch.inference_mode():
        out64 = model64.forward_bags(x64)
        out64_cl = model64.forward_bags(x64.contiguous(memory_format=torch.channels_last))
    for a, b in zip(out64, out64_cl):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    model.float()
    # the bag logits are the shared classifier applied to the attention-pooled embedding
    with torch.no_grad():
        W, b = model.upstream.classifier.weight, model.upstream.classifier.bias
        torch.testing.assert_close(out.bag_logits, out.embedding @ W.T + b)


def test_threshold_zeroes_small_weights_in_forward():
    model = _small_model(width=0.125, threshold=0.9)
    with torch.inference_mode():
        out = model.forward_bags(_bags(1, seed=2))
        t = torch.linalg.vector_norm(out.patch_logits, dim=-1)
        raw = t / t.sum(-1, keepdim=True)
    removed = raw < 0.9 / 64
    assert removed.any() and (~removed).any()
    assert (out.alpha[removed] == 0).all() and (out.alpha[~removed] > 0).all()
    assert (out.beta == 0).any()
    # threshold 0 disables: alpha is plain normalised norms
    model.config = dataclasses.replace(model.config, threshold=0.0)
    with torch.inference_mode():
        out0 = model.forward_bags(_bags(1, seed=2))
        t0 = torch.linalg.vector_norm(out0.patch_logits, dim=-1)
    torch.testing.assert_close(out0.alpha, t0 / t0.sum(-1, keepdim=True))
    assert (out0.beta > 0).all()


def test_attention_from_norms_hand_computed():
    norms = torch.tensor([1.0, 1.0, 1.0, 0.1])
    # a = [1, 1, 1, .1] / 3.1; threshold .2 / 4 = .05 removes only the last (0.032)
    torch.testing.assert_close(attention_from_norms(norms, 0.2), torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    a = norms / 3.1
    expect = (a - 0.025) / (a - 0.025).sum()  # threshold .1: all survive, shifted then renormalised
    torch.testing.assert_close(attention_from_norms(norms, 0.1), expect)
    torch.testing.assert_close(attention_from_norms(norms, 0.0), a)
    torch.testing.assert_close(attention_from_norms(torch.tensor([3.0, 1.0, 2.0, 0.5]), 0.1, top_k=2),
                               torch.tensor([0.6, 0.0, 0.4, 0.0]))
    # all-zero norms: uniform, never NaN, finite gradient
    z = torch.zeros(2, 5, requires_grad=True)
    att = attention_from_norms(z, 0.1)
    torch.testing.assert_close(att, torch.full((2, 5), 0.2))
    (att * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_all_zero_norms_give_uniform_attention_not_nan():
    model = _small_model(width=0.125)
    with torch.no_grad():
        last = model.upstream.trunk.stages[-1][-1]
        last.bn2.weight.zero_()
        last.bn2.bias.fill_(-1e4)  # final ReLU kills every cell vector (shortcut is bounded)
        model.upstream.classifier.weight.zero_()
        model.upstream.classifier.bias.zero_()  # every patch logit is 0
        model.downstream.to_hidden.weight.zero_()
        model.downstream.to_hidden.bias.zero_()
    with torch.inference_mode():
        out = model.forward_bags(_bags(1, seed=3))
        slide = model.forward_slide(torch.randn(4, model.embedding_dim))
    assert all(torch.isfinite(t).all() for t in out) and all(torch.isfinite(t).all() for t in slide)
    torch.testing.assert_close(out.beta, torch.full((1, 64, 16), 1 / 16))
    torch.testing.assert_close(out.alpha, torch.full((1, 64), 1 / 64))
    torch.testing.assert_close(slide.gamma, torch.full((4,), 1 / 4))


def test_top_k_patches_keeps_exactly_k():
    model = _small_model(width=0.125)
    with torch.inference_mode():
        full = model.forward_bags(_bags(2, seed=4))
        top = model.forward_bags(_bags(2, seed=4), top_k_patches=5)
        t = torch.linalg.vector_norm(full.patch_logits, dim=-1)
    assert ((top.alpha > 0).sum(-1) == 5).all()
    torch.testing.assert_close(top.alpha.sum(-1), torch.ones(2))
    for i in range(2):
        kept = set(torch.nonzero(top.alpha[i]).flatten().tolist())
        assert kept == set(t[i].topk(5).indices.tolist())
        torch.testing.assert_close(top.alpha[i, sorted(kept)], t[i, sorted(kept)] / t[i, sorted(kept)].sum())
    torch.testing.assert_close(top.patch_logits, full.patch_logits)  # only the pooling changes
    with pytest.raises(ValueError):
        model.forward_bags(_bags(1), top_k_patches=0)
    with pytest.raises(ValueError):
        model.forward_bags(_bags(1), top_k_patches=65)


def test_patch_ordering_row2_col5_is_patch21():
    model = _small_model(width=0.125)
    # split_patches: fill every patch with its own index, row-major with row = vertical
    ids = torch.arange(64.0).reshape(8, 8)
    x = ids.repeat_interleave(128, 0).repeat_interleave(128, 1).expand(1, 3, 1024, 1024).contiguous()
    for xx in (x, x.contiguous(memory_format=torch.channels_last)):
        patches = model.upstream.split_patches(xx)
        assert patches.shape == (64, 3, 128, 128)
        assert torch.equal(patches.amin(dim=(1, 2, 3)), torch.arange(64.0))
        assert torch.equal(patches.amax(dim=(1, 2, 3)), torch.arange(64.0))
    # the model: a pattern at row 2, col 5 changes patch 21 only
    base = _bags(1, seed=5)
    marked = base.clone()
    yy, xx_ = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    marked[0, :, 2 * 128:3 * 128, 5 * 128:6 * 128] = ((yy // 16 + xx_ // 16) % 2).float()  # checkerboard
    with torch.inference_mode():
        a, b = model.forward_bags(base), model.forward_bags(marked)
    changed = (a.patch_logits - b.patch_logits).abs().amax(-1)[0] > 1e-6
    assert torch.nonzero(changed).flatten().tolist() == [21]
    changed_cells = (a.cell_logits - b.cell_logits).abs().amax(-1)[0].amax(-1) > 1e-6
    assert torch.nonzero(changed_cells).flatten().tolist() == [21]
    # the same patch run alone through the trunk gives the same cells, in row-major order
    with torch.inference_mode():
        fmap = model.upstream.trunk(marked[:, :, 2 * 128:3 * 128, 5 * 128:6 * 128])[0]  # (E, 4, 4)
        cells = torch.stack([fmap[:, i, j] for i in range(4) for j in range(4)])  # c = row * 4 + col
        W, bias = model.upstream.classifier.weight, model.upstream.classifier.bias
        expected_logits = cells @ W.T + bias
        expected_beta = attention_from_norms(torch.linalg.vector_norm(cells, dim=-1), model.config.threshold)
    torch.testing.assert_close(b.cell_logits[0, 21], expected_logits, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(b.beta[0, 21], expected_beta, atol=ATOL, rtol=RTOL)


def test_batch_equals_separate_calls():
    model = _small_model(width=0.125, seed=6)
    x = _bags(3, seed=6)
    with torch.inference_mode():
        together = model.forward_bags(x)
        separate = [model.forward_bags(x[i:i + 1]) for i in range(3)]
    for name in BagOutput._fields:
        torch.testing.assert_close(getattr(together, name), torch.cat([getattr(s, name) for s in separate]),
                                   atol=ATOL, rtol=RTOL)


def test_forward_input_validation():
    model = _small_model(width=0.125)
    with pytest.raises(ValueError, match="1024"):
        model.forward_bags(torch.rand(1, 3, 512, 512))
    with pytest.raises(ValueError, match="uint8"):
        model.forward_bags(torch.zeros(1, 3, 1024, 1024, dtype=torch.uint8))
    with pytest.raises(ValueError):
        model.forward_slide(torch.rand(3, 7))
    with pytest.raises(ValueError):
        model.forward_slide(torch.rand(0, model.embedding_dim))


# ======================================================================================
# Config
# ======================================================================================
def test_config_json_round_trip_and_validation():
    cfg = MRANConfig(n_classes=3, class_names=["a", "b", "c"], width=0.5, threshold=0.2,
                     provenance={"seed": 1, "slides": ["x"]}, tiling={"level": 1})
    again = MRANConfig.from_json(cfg.to_json())
    assert again == cfg and again.class_names == ("a", "b", "c")
    assert json.loads(cfg.to_json())["class_names"] == ["a", "b", "c"]
    assert MRANConfig().class_names == ("class_0", "class_1")
    bad = [dict(n_classes=1), dict(n_classes=2.0), dict(n_classes=True), dict(width=0), dict(width=float("nan")),
           dict(width=100), dict(width=0.001), dict(threshold=1.0), dict(threshold=-0.1), dict(hidden=0),
           dict(class_names=["a"]), dict(class_names=["a", "a"]), dict(class_names="ab"), dict(class_names=["a", ""]),
           dict(input_px=1000), dict(patch_px=64), dict(grid=0), dict(provenance={"x": object()}),
           dict(provenance={"x": float("inf")}), dict(tiling=[1])]
    for kwargs in bad:
        with pytest.raises(ValueError):
            MRANConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown"):
        MRANConfig.from_dict({"n_classes": 2, "colour": "red"})
    with pytest.raises(ValueError):
        MRANConfig.from_json("{not json")
    # a consistent non-default geometry is allowed
    assert MRANConfig(input_px=256, patch_px=64, grid=4, cell_grid=2).n_patches == 16


def test_config_setter_guards_structure():
    model = _small_model(width=0.125)
    model.config = dataclasses.replace(model.config, threshold=0.3, class_names=("normal", "tumour"))
    assert model.config.threshold == 0.3
    with pytest.raises(ValueError, match="n_classes"):
        model.config = dataclasses.replace(model.config, n_classes=3, class_names=None)
    with pytest.raises(ValueError, match="width"):
        model.config = dataclasses.replace(model.config, width=0.25)


# ======================================================================================
# Reference import
# ======================================================================================
@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """A reference-style training checkpoint at width 1 (last and best state dicts differ)."""
    best = _random_ref(1.0, 2, seed=11)
    # "last" differs from "best" in its stem conv and downstream branch (shared tensors keep the file small)
    last = RefMRAN(1.0, 2).eval()
    last.load_state_dict(best.state_dict())
    with torch.no_grad():
        last.upstream.conv1.weight.mul_(-1.0)
        for p in last.downstream.parameters():
            p.normal_(0, 0.2)
    # the same entries as the reference training script saves (it also stores the builtin `id`)
    opt1 = torch.optim.Adam(last.upstream.parameters(), lr=1e-4)
    sched1 = torch.optim.lr_scheduler.OneCycleLR(opt1, max_lr=1e-4, steps_per_epoch=10, epochs=3)
    opt2 = torch.optim.Adam(last.downstream.parameters(), lr=1e-4)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[5], gamma=0.5)
    path = tmp_path_factory.mktemp("ref") / "checkpoint.pth"
    torch.save({"id": id, "epoch": 7, "model_state_dict": last.state_dict(),
                "optimizer1_state_dict": opt1.state_dict(), "scheduler1_state_dict": sched1.state_dict(),
                "optimizer2_state_dict": opt2.state_dict(), "scheduler2_state_dict": sched2.state_dict(),
                "up_weight": {"slide_3": 1.25}, "best_pth": best.state_dict()}, path)
    return path, last, best


def test_reference_import_equals_plain_implementation_width1(reference_checkpoint):
    path, last, best = reference_checkpoint
    model = load_model(path)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert (model.config.n_classes, model.config.width, model.config.hidden) == (2, 1.0, 32)
    info = model.config.provenance["imported_from"]
    assert info["state_dict"] == "best_pth" and info["epoch"] == 7 and info["sha256"] == sha256_of(path)
    x = _bags(1, seed=12)
    with torch.inference_mode():
        out = model.forward_bags(x)
        expected = [plain_bag(best, x[0], 0.1)]
        emb = torch.cat([out.embedding, torch.randn(5, 512, generator=torch.Generator().manual_seed(0))])
        slide = model.forward_slide(emb)
        slide_expected = plain_slide(best, emb, 0.1)
    # the published geometry, at width 1
    assert isinstance(out, BagOutput)
    assert out.bag_logits.shape == (1, 2) and out.embedding.shape == (1, 512)
    assert out.alpha.shape == (1, 64) and out.patch_logits.shape == (1, 64, 2)
    assert out.beta.shape == (1, 64, 16) and out.cell_logits.shape == (1, 64, 16, 2)
    assert isinstance(slide, SlideOutput) and slide.slide_logits.shape == (2,) and slide.gamma.shape == (6,)
    assert slide.bag_logits.shape == (6, 2) and slide.hidden.shape == (6, 32)
    _assert_bag_equal(out, expected)
    _assert_slide_equal(slide, slide_expected)
    # BN running statistics were imported (not left at 0 / 1)
    bn = model.upstream.trunk.stages[2][0].proj.bn
    torch.testing.assert_close(bn.running_var, best.upstream.layer3[0].shortcut[1].running_var)
    # which="last" takes model_state_dict
    last_model = load_model(path, which="last")
    with torch.inference_mode():
        _assert_slide_equal(last_model.forward_slide(emb), plain_slide(last, emb, 0.1))
    torch.testing.assert_close(last_model.upstream.trunk.stem_conv.weight, last.upstream.conv1.weight)


def test_reference_import_dataparallel_c3_threshold_topk_legacy(tmp_path):
    ref = _random_ref(0.125, 3, seed=20, he_init=True)
    state = {k.replace("upstream.", "upstream.module.", 1): v for k, v in ref.state_dict().items()}
    assert any(k.startswith("upstream.module.layer2.0.shortcut.0") for k in state)
    zipped, legacy = tmp_path / "dp.pt", tmp_path / "legacy.bin"
    torch.save({"model_state_dict": state}, zipped)
    torch.save({"best_pth": state}, legacy, _use_new_zipfile_serialization=False)
    m1, m2 = load_model(zipped), load_model(legacy)
    assert m1.config.n_classes == 3 and m1.config.width == 0.125 and m1.embedding_dim == 64
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # noise of a different contrast in every patch: varied attention, no ties for top-k
    contrast = torch.linspace(0.0, 1.0, 64).reshape(8, 8).repeat_interleave(128, 0).repeat_interleave(128, 1)
    x = _bags(1, seed=21) * contrast
    # float64: this test is about the semantics (threshold, top-k), not float32 kernel noise
    ref, m1, x = ref.double(), m1.double(), x.double()
    with torch.inference_mode():
        # Centre the patch logits (same change in both models) so that their norms differ a lot
        # and a threshold of 0.9 removes patches and cells; then compare, with and without top-k.
        shift = m1.forward_bags(x).patch_logits[0].mean(0)
        ref.upstream.linear.bias -= shift
        m1.upstream.classifier.bias -= shift
        m1.config = dataclasses.replace(m1.config, threshold=0.9)
        out = m1.forward_bags(x)
        maps = plain_patch_maps(ref, x[0])
        _assert_bag_equal(out, [plain_bag(ref, x[0], 0.9, maps=maps)])
        assert (out.alpha == 0).any() and (out.beta == 0).any()  # the threshold really bites here
        _assert_bag_equal(m1.forward_bags(x, top_k_patches=7), [plain_bag(ref, x[0], 0.9, top_k=7, maps=maps)])


def test_reference_state_dict_in_plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = _random_ref(0.125, 2, seed=30)
    path = tmp_path / "ref.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = load_model(path)
    torch.testing.assert_close(model.downstream.classifier.weight, ref.downstream.linear1.weight)
    emb = torch.randn(3, 64)
    with torch.inference_mode():
        _assert_slide_equal(model.forward_slide(emb), plain_slide(ref, emb))


# ======================================================================================
# Our format
# ======================================================================================
def test_save_load_round_trip(tmp_path):
    cfg = MRANConfig(n_classes=3, class_names=["a", "b", "c"], width=0.125, threshold=0.05,
                     provenance={"trained_on": ["s1", "s2"], "epochs": 3}, tiling={"white_fraction": 0.98})
    torch.manual_seed(40)
    model = MRAN(cfg).eval()
    _randomise_bn(model, 40)
    path = tmp_path / "model.safetensors"
    assert save_model(model, path) == path
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temp file left
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.config.provenance["epochs"] == 3
    x = _bags(1, seed=41)
    with torch.inference_mode():
        for a, b in zip(model.forward_bags(x), loaded.forward_bags(x)):
            assert torch.equal(a, b)
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "napari-mran" and meta["format_version"] == "1"
    assert json.loads(meta["mran_config"])["class_names"] == ["a", "b", "c"]
    # no overwrite unless asked; the existing file is untouched
    digest = sha256_of(path)
    other = _small_model(width=0.125, n_classes=3, seed=42)
    with pytest.raises(OutputExistsError):
        save_model(other, path)
    assert sha256_of(path) == digest
    save_model(other, path, overwrite=True)
    assert sha256_of(path) != digest and os.listdir(tmp_path) == ["model.safetensors"]
    with pytest.raises(CheckpointError, match="directory"):
        save_model(other, tmp_path)
    # a file named like a torch checkpoint is still read by content
    os.replace(path, tmp_path / "model.pth")
    assert load_model(tmp_path / "model.pth").config.n_classes == 3


def test_sha256_of_streams(tmp_path):
    import hashlib

    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f", chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_demo_model():
    if DEMO_MODEL_PATH.is_file():
        assert isinstance(load_model("demo"), MRAN)
    else:
        with pytest.raises(CheckpointError, match="demo model is not bundled"):
            load_model("demo")


# ======================================================================================
# Hostile and broken checkpoints
# ======================================================================================
class _ShellPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class _OpenPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def test_malicious_pickles_are_refused_and_never_run(tmp_path):
    # sanity: the open-based payload is live under a plain unpickler
    control = tmp_path / "control-marker"
    live = pickle.loads(pickle.dumps({"model_state_dict": _OpenPayload(control)}))
    live["model_state_dict"].close()
    assert control.exists()

    cases = []
    for i, payload_cls in enumerate((_ShellPayload, _OpenPayload)):
        marker = tmp_path / f"marker-{i}"
        zipped = tmp_path / f"evil-{i}.pth"
        torch.save({"model_state_dict": payload_cls(marker), "best_pth": {"x": torch.zeros(1)}}, zipped)
        raw = tmp_path / f"evil-{i}.pkl"
        raw.write_bytes(pickle.dumps({"best_pth": payload_cls(marker)}, protocol=2))
        cases += [(zipped, marker), (raw, marker)]
    for path, marker in cases:
        with pytest.raises(CheckpointError, match="refused") as info:
            load_model(path)
        assert str(path) in str(info.value)
        assert not marker.exists()


@pytest.fixture(scope="module")
def small_reference_state():
    return _random_ref(0.125, 2, seed=50).state_dict()


def _save_ref(tmp_path, name, state):
    path = tmp_path / name
    torch.save({"model_state_dict": state}, path)
    return path


def test_missing_directory_empty_random_truncated(tmp_path, small_reference_state):
    cases = {"missing.pth": "no such file"}
    (tmp_path / "adir").mkdir()
    cases["adir"] = "directory"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "empty"
    noise = random.Random(1234).randbytes(4096)  # fixed bytes: no flaky accidental opcodes
    (tmp_path / "random.pth").write_bytes(b"\x00" + noise)
    cases["random.pth"] = "not a recognised checkpoint"
    (tmp_path / "random80.pth").write_bytes(b"\x80\x02" + noise)
    cases["random80.pth"] = "not a readable torch checkpoint"
    good = _save_ref(tmp_path, "good.pth", small_reference_state)
    data = good.read_bytes()
    for frac in (0.5, 0.95):
        (tmp_path / f"cut{frac}.pth").write_bytes(data[: int(len(data) * frac)])
        cases[f"cut{frac}.pth"] = "truncated or corrupt"
    model = _small_model(width=0.125)
    ours = save_model(model, tmp_path / "ours.safetensors")
    sdata = ours.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(sdata[: len(sdata) // 2])
    cases["cut.safetensors"] = "truncated or corrupt"
    (tmp_path / "header-only.safetensors").write_bytes(sdata[: 8 + struct.unpack("<Q", sdata[:8])[0]])
    cases["header-only.safetensors"] = "truncated or corrupt"
    for name, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason) as info:
            load_model(tmp_path / name)
        assert name in str(info.value), str(info.value)
    assert isinstance(load_model(good), MRAN)


def test_oversized_file_is_refused_before_reading(tmp_path, small_reference_state):
    path = _save_ref(tmp_path, "big.pth", small_reference_state)
    size = path.stat().st_size
    with pytest.raises(CheckpointError, match="larger than the limit"):
        load_model(path, max_bytes=size - 1)
    assert isinstance(load_model(path, max_bytes=size), MRAN)


def test_wrong_keys_are_listed(tmp_path, small_reference_state):
    state = dict(small_reference_state)
    state["upstream.fc.weight"] = torch.zeros(2, 64)
    del state["upstream.layer4.1.conv2.weight"]
    state["downstream.linear2.bias"] = state.pop("downstream.linear1.bias")
    with pytest.raises(CheckpointError) as info:
        load_model(_save_ref(tmp_path, "keys.pth", state))
    msg = str(info.value)
    for key in ("upstream.layer4.1.conv2.weight", "downstream.linear1.bias", "upstream.fc.weight",
                "downstream.linear2.bias", "keys.pth"):
        assert key in msg
    assert "missing" in msg and "unexpected" in msg
    with pytest.raises(CheckpointError, match="model_state_dict"):
        torch.save({"weights": small_reference_state}, tmp_path / "nokey.pth")
        load_model(tmp_path / "nokey.pth")
    with pytest.raises(CheckpointError, match="which='last'"):
        torch.save({"best_pth": small_reference_state}, tmp_path / "bestonly.pth")
        load_model(tmp_path / "bestonly.pth", which="last")


def test_shape_and_value_problems(tmp_path, small_reference_state):
    state = dict(small_reference_state)
    state["upstream.layer2.0.conv1.weight"] = torch.zeros(16, 8, 5, 5)
    with pytest.raises(CheckpointError) as info:
        load_model(_save_ref(tmp_path, "shape.pth", state))
    assert "upstream.layer2.0.conv1.weight: expected shape (16, 8, 3, 3), got (16, 8, 5, 5)" in str(info.value)

    state = dict(small_reference_state)
    state["downstream.linear1.weight"] = torch.zeros(3, 32)  # 3 classes downstream, 2 upstream
    with pytest.raises(CheckpointError, match="downstream.linear1.weight: expected shape"):
        load_model(_save_ref(tmp_path, "classes.pth", state))

    state = dict(small_reference_state)
    w = state["upstream.layer3.1.bn2.running_var"].clone()
    w[0] = float("nan")
    state["upstream.layer3.1.bn2.running_var"] = w
    with pytest.raises(CheckpointError, match=r"NaN.*upstream.layer3.1.bn2.running_var"):
        load_model(_save_ref(tmp_path, "nan.pth", state))

    state = dict(small_reference_state)
    state["upstream.linear.bias"] = "not a tensor"
    with pytest.raises(CheckpointError, match="upstream.linear.bias"):
        load_model(_save_ref(tmp_path, "str.pth", state))


def test_our_format_bad_metadata_and_values(tmp_path):
    from safetensors.torch import save_file

    model = _small_model(width=0.125)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    good = {"format": "napari-mran", "format_version": "1", "mran_config": model.config.to_json()}
    cases = {
        "fmt": ({**good, "format": "other"}, "'format'"),
        "newer": ({**good, "format_version": "2"}, "newer"),
        "noconfig": ({k: v for k, v in good.items() if k != "mran_config"}, "mran_config"),
        "badjson": ({**good, "mran_config": "{oops"}, "invalid mran_config"),
        "badvalue": ({**good, "mran_config": json.dumps({"n_classes": 1})}, "invalid mran_config"),
        "mismatch": ({**good, "mran_config": MRANConfig(width=0.25).to_json()}, "shape mismatch"),
    }
    for name, (meta, reason) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=reason) as info:
            load_model(path)
        assert path.name in str(info.value)
    nan = dict(tensors)
    nan["upstream.classifier.weight"] = torch.full_like(nan["upstream.classifier.weight"], float("inf"))
    save_file(nan, str(tmp_path / "inf.safetensors"), metadata=good)
    with pytest.raises(CheckpointError, match="upstream.classifier.weight"):
        load_model(tmp_path / "inf.safetensors")
    extra = {**tensors, "extra": torch.zeros(1)}
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=good)
    with pytest.raises(CheckpointError, match="unexpected keys: extra"):
        load_model(tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        with torch.no_grad():
            model.upstream.classifier.bias.fill_(float("nan"))
        save_model(model, tmp_path / "nan-save.safetensors")
    assert not (tmp_path / "nan-save.safetensors").exists()


# ======================================================================================
# Losses
# ======================================================================================
def _random_bag_output(n, n_classes, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    alpha = torch.rand(n, 64, generator=gen)
    beta = torch.rand(n, 64, 16, generator=gen)
    out = BagOutput(torch.randn(n, n_classes, generator=gen), torch.randn(n, 8, generator=gen),
                    alpha / alpha.sum(-1, keepdim=True), torch.randn(n, 64, n_classes, generator=gen),
                    beta / beta.sum(-1, keepdim=True), torch.randn(n, 64, 16, n_classes, generator=gen))
    if requires_grad:
        out = BagOutput(*(t.requires_grad_() for t in out))
    return out


def _ce(logits, label, cw):
    return -cw[label] * torch.log_softmax(logits, -1)[label]


def test_upstream_loss_matches_explicit_loops():
    out = _random_bag_output(2, 3, seed=60)
    labels = torch.tensor([2, 0])
    w = torch.tensor([0.5, 1.5])
    cw = torch.tensor([0.2, 0.3, 0.5])
    rho, lam = 0.7, 5.0
    bag = sum(_ce(out.bag_logits[i], labels[i], cw) * w[i] for i in range(2)) / 2
    patch = sum(_ce(out.patch_logits[i, p], labels[i], cw) * w[i] * out.alpha[i, p]
                for i in range(2) for p in range(64)) / 128
    cell = sum(_ce(out.cell_logits[i, p, c], labels[i], cw) * w[i] * out.alpha[i, p] * out.beta[i, p, c]
               for i in range(2) for p in range(64) for c in range(16)) / 2048
    expected = bag + lam * rho * patch + lam**2 * rho * cell
    torch.testing.assert_close(upstream_loss(out, labels, w, rho, lam, cw), expected)
    ones = torch.ones(3)
    plain = upstream_loss(out, labels, w, rho, lam)
    torch.testing.assert_close(plain, upstream_loss(out, labels, w, rho, lam, ones))
    # rho = 0 leaves only the bag term: mean(CE * w)
    torch.testing.assert_close(upstream_loss(out, labels, w, 0.0),
                               (F.cross_entropy(out.bag_logits, labels, reduction="none") * w).mean())


def test_upstream_loss_attention_gradients():
    out = _random_bag_output(1, 2, seed=61, requires_grad=True)
    loss = upstream_loss(out, torch.tensor([1]), torch.ones(1), rho=1.0)
    loss.backward()
    assert out.alpha.grad is None  # reference: alpha detached in the loss weights
    assert out.beta.grad is not None and out.beta.grad.abs().sum() > 0  # beta is not
    out2 = _random_bag_output(1, 2, seed=61, requires_grad=True)
    upstream_loss(out2, torch.tensor([1]), torch.ones(1), rho=1.0, detach_attention="none").backward()
    assert out2.alpha.grad.abs().sum() > 0
    out3 = _random_bag_output(1, 2, seed=61, requires_grad=True)
    upstream_loss(out3, torch.tensor([1]), torch.ones(1), rho=1.0, detach_attention="all").backward()
    assert out3.alpha.grad is None and out3.beta.grad is None
    with pytest.raises(ValueError):
        upstream_loss(out, torch.tensor([1]), torch.ones(1), rho=1.0, detach_attention="some")


def test_gradient_reaches_upstream_and_downstream_parameters():
    model = _small_model(width=0.125, seed=62).train()
    out = model.forward_bags(_bags(2, seed=62))
    loss = upstream_loss(out, torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), rho=ramp(1, 3),
                         class_weights=class_weights_from_counts([3, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    for p in (model.upstream.trunk.stem_conv.weight, model.upstream.trunk.stages[3][1].conv2.weight,
              model.upstream.classifier.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert model.downstream.to_hidden.weight.grad is None
    slide = model.forward_slide(out.embedding.detach())
    dloss = downstream_loss(slide, 1, rho=0.5)
    dloss.backward()
    assert model.downstream.to_hidden.weight.grad.abs().sum() > 0


def test_downstream_loss_hand_computed():
    gen = torch.Generator().manual_seed(63)
    u = torch.randn(4, 2, generator=gen)
    gamma = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = SlideOutput(torch.tensor([0.3, -0.2]), gamma, u, torch.randn(4, 32, generator=gen))
    cw = torch.tensor([0.25, 0.75])
    expected = _ce(out.slide_logits, 1, cw) + 5 * 0.5 * sum(_ce(u[i], 1, cw) * gamma[i] for i in range(4)) / 4
    torch.testing.assert_close(downstream_loss(out, 1, 0.5, class_weights=cw), expected)
    torch.testing.assert_close(downstream_loss(out, torch.tensor(1), 0.5, class_weights=cw), expected)


def test_ramp_and_class_weights():
    assert ramp(0, 1) == 1.0
    assert ramp(9, 10) == 1.0
    assert math.isclose(ramp(0, 10), math.exp(-1))
    assert math.isclose(ramp(3, 7), math.exp(-(1 - 3 / 6) ** 2))
    with pytest.raises(ValueError):
        ramp(5, 5)
    w = class_weights_from_counts([30, 10])
    torch.testing.assert_close(w, torch.tensor([10 / 40, 30 / 40]))  # w0 = n1/(n0+n1), w1 = n0/(n0+n1)
    w3 = class_weights_from_counts(torch.tensor([10, 20, 40]))
    torch.testing.assert_close(w3, torch.tensor([4 / 7, 2 / 7, 1 / 7]))
    for bad in ([5], [3, 0], [2, -1], [1.5, 2]):
        with pytest.raises(ValueError):
            class_weights_from_counts(bad)
