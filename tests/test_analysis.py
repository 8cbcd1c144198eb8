"""analyze_slide: events, faithfulness to direct model calls, determinism, cancel, failures."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import tifffile
import torch

from napari_mran import AnalysisError, open_slide
from napari_mran.analysis import analyze_slide, plan_reads, predict_slide
from napari_mran._events import collect as drain
from slide_writers import patch, write_svs_pyramid


@pytest.fixture(scope="module")
def tissue_slide(tmp_path_factory, cmu_pixels):
    """6144 x 4096 px (3 x 2 bags): tissue tiled from CMU-1 in 4 bags, glass in 2."""
    h, w = 4096, 6144
    img = np.full((h, w, 3), 243, np.uint8)
    src = cmu_pixels[:2048, :2048]
    for (r, c) in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        img[r * 2048:(r + 1) * 2048, c * 2048:(c + 1) * 2048] = src[:, ::-1] if c % 2 else src
    p = tmp_path_factory.mktemp("an") / "tissue.svs"
    write_svs_pyramid(p, img, downsamples=(1, 2, 4, 16), tile=256, mpp=0.5)
    return p




def test_events_and_result(tissue_slide, tiny_model):
    with open_slide(tissue_slide) as slide:
        events, result = drain(analyze_slide(slide, tiny_model, batch_size=2, compile=False))
    stages = [e.stage for e in events]
    assert stages[0] == "tissue" and stages[-1] == "done" and "slide" in stages
    done = [e.bags_done for e in events if e.stage == "bags"]
    assert done == sorted(done) and done[-1] == 4
    assert events[0].tissue_boxes.tolist() == [[0, 0, 2048, 2048], [2048, 0, 4096, 2048],
                                               [2048, 2048, 4096, 4096], [4096, 2048, 6144, 4096]]
    painted = np.concatenate([e.new.indices for e in events if e.stage == "bags" and e.new is not None])
    assert sorted(painted.tolist()) == [0, 1, 2, 3]  # every bag was sent for progressive painting
    assert result.boxes.shape == (4, 4) and result.n_bags == 4
    assert result.bag_attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(result.patch_attention.sum(1), 1, atol=1e-5)
    assert np.allclose(result.cell_attention.sum(2), 1, atol=1e-5)
    assert result.slide_probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.class_names == ["normal", "tumour"]
    prov = result.provenance
    assert prov["reading"]["level"] == 1 and prov["reading"]["resize"] == "none"  # ds-2 level used
    assert prov["mpp"] == {"value": [0.5, 0.5], "source": "Aperio description MPP"}
    assert len(prov["slide"]["sha256_first_mb"]) == 64 and prov["inference"]["device"] == "cpu"


def test_matches_direct_model_calls(tissue_slide, tiny_model):
    """The engine's numbers are the model's numbers on the bag pixels (no hidden transform)."""
    with open_slide(tissue_slide) as slide:
        result = predict_slide(slide, tiny_model, batch_size=3, compile=False)
        imgs = [slide.read_region((int(b[0]), int(b[1])), 1, (1024, 1024)) for b in result.boxes]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        out = tiny_model.forward_bags(x)
        so = tiny_model.forward_slide(out.embedding)
    assert np.allclose(result.patch_attention, out.alpha.numpy(), atol=1e-5)
    assert np.allclose(result.cell_attention, out.beta.numpy(), atol=1e-5)
    assert np.allclose(result.bag_probs, torch.softmax(out.bag_logits, -1).numpy(), atol=1e-5)
    assert np.allclose(result.bag_attention, so.gamma.numpy(), atol=1e-5)
    assert np.allclose(result.slide_probs, torch.softmax(so.slide_logits, -1).numpy(), atol=1e-5)


def test_deterministic_across_batch_and_threads(tissue_slide, tiny_model):
    with open_slide(tissue_slide) as slide:
        a = predict_slide(slide, tiny_model, batch_size=1, num_workers=1, compile=False)
        b = predict_slide(slide, tiny_model, batch_size=4, num_workers=4, prefetch=8, compile=False)
    for name in ("bag_attention", "patch_attention", "cell_attention", "cell_probs", "slide_probs"):
        assert np.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name


def test_level0_path_reduces_by_two(tmp_path, cmu_pixels, tiny_model):
    """No downsample-2 level: level 0 is read and area-reduced 2x (PIL reduce)."""
    img = cmu_pixels[:2048, :2048]
    p = write_svs_pyramid(tmp_path / "flat.svs", img, downsamples=(1,), mpp=0.5)
    with open_slide(p) as slide:
        plan = plan_reads(slide, 2048, 1024)
        assert (plan.level, plan.read_px, plan.resize) == (0, 2048, "reduce2")
        result = predict_slide(slide, tiny_model, compile=False)
        level0 = slide.read_region((0, 0), 0, (2048, 2048)).astype(np.float32)
    expect = level0.reshape(1024, 2, 1024, 2, 3).mean((1, 3))
    x = torch.from_numpy(np.round(expect)).permute(2, 0, 1)[None] / 255
    with torch.inference_mode():
        out = tiny_model.forward_bags(x)
    assert np.allclose(result.patch_attention[0], out.alpha[0].numpy(), atol=2e-3)


def test_cancel_between_batches(tissue_slide, tiny_model):
    before = threading.active_count()
    with open_slide(tissue_slide) as slide:
        gen = analyze_slide(slide, tiny_model, batch_size=1, compile=False)
        for ev in gen:
            if ev.stage == "bags":
                break
        gen.close()  # GeneratorExit at the yield: the decode pool is shut down
        assert ev.bags_done < 4
    assert threading.active_count() <= before + 1


def test_failed_bags_recorded_then_abort(tmp_path, tissue_slide, tiny_model):
    p = tmp_path / "bad.svs"
    shutil.copy(tissue_slide, p)
    with tifffile.TiffFile(p) as t:
        page = t.pages[2]  # level 1 (page 1 is the stripped thumbnail)
        assert page.imagewidth == 3072
        off = page.dataoffsets[0]  # a tile of bag 0 at level 1
    patch(p, off + 2, np.random.default_rng(0).bytes(64))
    with open_slide(p) as slide:
        result = predict_slide(slide, tiny_model, compile=False, max_failed_fraction=0.5)
        assert result.degraded and len(result.failed_boxes) == 1
        assert result.failed_boxes[0].tolist() == [0, 0, 2048, 2048]
        assert "tile (0, 0)" in result.failed_reasons[0]
        assert result.n_bags == 3 and result.bag_attention.sum() == pytest.approx(1, abs=1e-5)
        with pytest.raises(AnalysisError, match="failed to decode"):
            predict_slide(slide, tiny_model, compile=False, max_failed_fraction=0.1)


def test_bag_size_in_um(tissue_slide, tiny_model):
    with open_slide(tissue_slide) as slide:
        result = predict_slide(slide, tiny_model, bag_um=1024.0, compile=False)
        assert result.bag_px == 2048 and result.provenance["tissue"]["bag_um"] == 1024.0
    with open_slide(tissue_slide, mpp=0.25) as slide:  # a "40x" scan: same physical bags
        gen = analyze_slide(slide, tiny_model, bag_um=1024.0, compile=False)
        first = next(gen)
        gen.close()
        assert first.tissue_boxes[0].tolist() == [0, 0, 4096, 4096]


def test_heatmap_lands_on_the_bag(tissue_slide, tiny_model):
    with open_slide(tissue_slide) as slide:
        result = predict_slide(slide, tiny_model, compile=False)
    result.cell_tissue = None  # placement only here; the shown-cell mask: tests/test_roi.py
    i = 2  # bag at x 2048-4096, y 2048-4096
    assert result.boxes[i].tolist() == [2048, 2048, 4096, 4096]
    for level, per_bag in (("bag", 1), ("patch", 8), ("cell", 32)):
        hm = result.heatmap(level, weighting="local")
        sy, sx = hm.scale
        assert sy == sx == 2048 / per_bag
        row = int((2048 - hm.translate[0]) / sy)
        col = int((2048 - hm.translate[1]) / sx)
        if level == "bag":
            assert hm.data[row, col] == pytest.approx(result.bag_attention[i])
            assert np.isnan(hm.data[0, 2])  # glass bag outside tissue
        elif level == "patch":
            assert hm.data[row + 2, col + 5] == pytest.approx(result.patch_attention[i, 2 * 8 + 5])
        else:  # cell (1, 3) of patch (2, 5)
            assert hm.data[row + 2 * 4 + 1, col + 5 * 4 + 3] == pytest.approx(
                result.cell_attention[i, 2 * 8 + 5, 1 * 4 + 3])


def test_reference_tissue_rule_is_exact_at_level0(cmu_small):
    """A slide stored at level 0 only: the white fraction is the reference rule on level-0 pixels."""
    from napari_mran.analysis import find_tissue_bags

    with open_slide(cmu_small) as slide:
        t = find_tissue_bags(slide, 2048)
        assert t.parameters["rule_level"] == 0 and t.boxes.tolist() == [[0, 0, 2048, 2048]]
        px = slide.read_region((0, 0), 0, (2048, 2048))
        assert t.white_fraction[0] == pytest.approx((px > 127).all(-1).mean())


def test_reference_rule_is_not_fooled_by_low_resolution(tmp_path):
    """Pale stroma averages to 'white' at 1/32 scale; the rule is evaluated at <= 4x instead."""
    from napari_mran.analysis import find_tissue_bags
    from napari_mran.tissue import select_tissue_bags
    from napari_mran.synthetic import make_slide

    make_slide(tmp_path / "s.svs", 6144, 6144, tumour=False, seed=19)  # pale stroma
    with open_slide(tmp_path / "s.svs") as slide:
        t = find_tissue_bags(slide, 2048)
        assert t.parameters["rule_level_downsample"] <= 4
        low = slide.read_level(slide.smallest_level)
        d = slide.level_downsamples[-1]
        naive = select_tissue_bags(low, (d, d), slide.dimensions)
        assert len(t.boxes) >= 6 and len(naive.boxes) <= 3  # the naive rule drops real tissue
        for box, wf in zip(t.boxes, t.white_fraction):
            px = slide.read_region((int(box[0]), int(box[1])), 2, (512, 512))
            assert wf == pytest.approx((px > 127).all(-1).mean())


def test_out_of_memory_halves_the_batch_with_same_results(tissue_slide, tiny_model, monkeypatch):
    """Battery row 23: a CUDA OOM halves the batch and retries; numbers are unchanged."""
    import napari_mran.analysis as A

    with open_slide(tissue_slide) as slide:
        ref = predict_slide(slide, tiny_model, batch_size=4, compile=False)
        real = A._forward_with_oom_retry
        seen = []

        def flaky(run, images, dev, bs):
            def oom_for_big(x, _run=run):
                seen.append(x.shape[0])
                if x.shape[0] > 1:
                    raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")
                return _run(x)
            return real(oom_for_big, images, dev, bs)

        monkeypatch.setattr(A, "_forward_with_oom_retry", flaky)
        got = predict_slide(slide, tiny_model, batch_size=4, compile=False)
    assert 4 in seen and 2 in seen and seen[-1] == 1
    assert got.provenance["inference"]["batch_size_final"] == 1
    assert np.allclose(got.cell_attention, ref.cell_attention, atol=1e-5)
    assert np.allclose(got.slide_probs, ref.slide_probs, atol=1e-5)


def test_compile_failure_falls_back_to_eager(tissue_slide, tiny_model, monkeypatch):
    """torch.compile errors surface on the first call (no compiler, unsupported op): the
    analysis falls back to eager, records it, and the numbers are the eager ones."""
    def broken_compile(fn, **kwargs):
        def compiled(*a, **k):
            raise RuntimeError("simulated: inductor needs a C++ compiler")
        return compiled

    with open_slide(tissue_slide) as slide:
        ref = predict_slide(slide, tiny_model, compile=False)
        monkeypatch.setattr(torch, "compile", broken_compile)
        got = predict_slide(slide, tiny_model, compile=True)
    assert got.provenance["inference"]["compile"] == "failed (RuntimeError); eager"
    assert ref.provenance["inference"]["compile"] == "no"
    assert np.allclose(got.cell_attention, ref.cell_attention, atol=1e-6)


def test_reduced_precision_path_matches_float32(tissue_slide):
    """The autocast path a GPU takes (bf16 / fp16), run on the CPU with ``amp=`` forced:
    outputs come back as float32 numpy, and the trained demo model's attention and
    predictions stay close to float32 (bf16 keeps 8 bits of mantissa)."""
    from napari_mran import load_model
    from napari_mran.analysis import amp_policy

    model = load_model("demo")
    assert amp_policy("auto", torch.device("cpu")) == (False, torch.float32)
    assert amp_policy("off", torch.device("cuda")) == (False, torch.float32)
    assert amp_policy("fp16", torch.device("cpu")) == (True, torch.float16)
    with pytest.raises(ValueError, match="amp"):
        amp_policy("int8", torch.device("cpu"))
    with open_slide(tissue_slide) as slide:
        ref = predict_slide(slide, model, batch_size=2, compile=False)
        got = predict_slide(slide, model, batch_size=2, compile=False, amp="bf16")
    assert ref.provenance["inference"]["amp"] == "off"
    assert got.provenance["inference"]["amp"] == "torch.bfloat16"
    for name in ("bag_attention", "patch_attention", "cell_attention", "patch_probs",
                 "slide_probs"):
        b = getattr(got, name)
        assert b.dtype == np.float32 and np.isfinite(b).all(), name
    for name in ("patch_attention", "cell_attention"):  # alpha, beta: computed in float32
        b = getattr(got, name)
        assert np.allclose(b.sum(-1), 1.0, atol=1e-5), name  # (bf16 heads: off by 2e-3)
    assert np.abs(got.slide_probs - ref.slide_probs).max() < 0.05
    assert np.abs(got.bag_attention - ref.bag_attention).max() < 0.05
    for name in ("patch_attention", "cell_attention"):
        a = getattr(ref, name).ravel()
        b = getattr(got, name).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.98, name
    # the ranking a pathologist reads: the most-attended patch of each bag is kept
    # (or one within bf16 rounding of it)
    rows = np.arange(len(ref.patch_attention))
    assert (ref.patch_attention.max(1) - ref.patch_attention[rows, got.patch_attention.argmax(1)]
            < 0.02).all()
