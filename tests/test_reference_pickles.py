"""The authors' full training checkpoints (weights + optimiser + scheduler objects).

Their ``main.py`` saves one dict per epoch with the model weights (``model_state_dict``,
``best_pth``) and the state dicts of two Adam optimisers, a OneCycleLR (upstream) and a
MultiStepLR (downstream) scheduler, plus ``id`` and ``up_weight``. Under the PyTorch
they pin (1.12) OneCycleLR's state dict holds ``anneal_func``, a *bound method*, which
pickles as ``getattr(<the OneCycleLR object>, '_annealing_cos')`` and drags in the whole
scheduler and its Adam optimiser (``torch.optim.lr_scheduler.OneCycleLR``,
``torch.optim.adam.Adam``, ``collections.defaultdict``, parameters...). torch's
weights-only loader refuses such a file; ``load_model`` imports its weights with a
restricted unpickler that builds tensors and plain containers and turns the known
optimiser/scheduler objects into inert records, never calling or importing anything.

The files are built here with the current torch in exactly that shape (torch >= 2 no
longer puts ``anneal_func`` in the state dict, so it is put back by hand as the bound
method's reduce), saved with ``torch.save`` (zip and legacy containers).
"""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import subprocess
import zipfile

import pytest
import torch
from test_model import _bags, _random_ref, plain_slide

from napari_mran.errors import CheckpointError
from napari_mran.model import load_model, reference_key, sha256_of

torch.set_num_threads(min(2, torch.get_num_threads()))


class _BoundMethod:
    """Pickles exactly like a bound method ``obj.name`` does: ``getattr(obj, name)``."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def _torch112_scheduler_state(sched) -> dict:
    """``LRScheduler.state_dict()`` of torch 1.12: every attribute except ``optimizer``;
    for OneCycleLR that includes ``anneal_func``, a bound method of the scheduler."""
    if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):
        sched.anneal_func = _BoundMethod(sched, "_annealing_cos")
    return {k: v for k, v in vars(sched).items() if k != "optimizer"}


def _authors_checkpoint(last, best, epoch=7):
    """The dict the authors' main.py saves: both branches' optimisers and schedulers."""
    opt1 = torch.optim.Adam(last.upstream.parameters(), lr=1e-4)
    sched1 = torch.optim.lr_scheduler.OneCycleLR(opt1, max_lr=1e-4, steps_per_epoch=10, epochs=3)
    opt2 = torch.optim.Adam(last.downstream.parameters(), lr=1e-4)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[5], gamma=0.5)
    for _ in range(2):  # some optimiser state (exp_avg ... keyed by parameter in the object)
        for opt, branch in ((opt1, last.upstream), (opt2, last.downstream)):
            opt.zero_grad()
            sum(p.sum() for p in branch.parameters()).backward()
            opt.step()
        sched1.step()
        sched2.step()
    return {
        "id": id,
        "epoch": epoch,
        "model_state_dict": last.state_dict(),
        "best_pth": best.state_dict(),
        "optimizer1_state_dict": opt1.state_dict(),
        "scheduler1_state_dict": _torch112_scheduler_state(sched1),
        "optimizer2_state_dict": opt2.state_dict(),
        "scheduler2_state_dict": _torch112_scheduler_state(sched2),
        "up_weight": {"slide_3": [1.25, 0.75]},
        "best_acc": 0.9,
    }


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("authors")
    best = _random_ref(0.125, 2, seed=70)
    last = _random_ref(0.125, 2, seed=71)
    ckpt = _authors_checkpoint(last.train(), best)
    last.eval()
    zipped, legacy = folder / "checkpoint.pth", folder / "legacy.pth"
    torch.save(ckpt, zipped)
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    plain = folder / "plain.pth"
    torch.save({"best_pth": best.state_dict()}, plain)
    return {"zip": zipped, "legacy": legacy, "plain": plain, "best": best, "last": last}


def test_the_files_really_hold_optimiser_and_bound_method_objects(authors_files):
    for key in ("zip", "legacy"):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(authors_files[key], map_location="cpu", weights_only=True)
    # the globals the zip file's pickle names (a static scan: runs nothing)
    with zipfile.ZipFile(authors_files["zip"]) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    found = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    # (MultiStepLR's state dict holds no method, so only its milestones Counter is pickled)
    for name in ("__builtin__ getattr", "torch.optim.adam Adam", "torch.optim.lr_scheduler OneCycleLR",
                 "collections defaultdict", "collections Counter", "torch._utils _rebuild_parameter",
                 "__builtin__ id"):
        assert name in found, name


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_authors_checkpoint_imports_with_equal_outputs(authors_files, container):
    path, best, last = authors_files[container], authors_files["best"], authors_files["last"]
    model = load_model(path)
    info = model.config.provenance["imported_from"]
    assert info["state_dict"] == "best_pth" and info["epoch"] == 7 and info["sha256"] == sha256_of(path)
    assert "torch.optim.lr_scheduler.OneCycleLR" in info["not_restored"]
    assert {"torch.optim.adam.Adam", "builtins.getattr", "builtins.id"} <= set(info["not_restored"])
    # every weight (BN running statistics included) is the file's, bit for bit
    ref_state = best.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref_state[reference_key(key)]), key
    # outputs equal those of the same weights loaded from a plain state-dict checkpoint
    plain = load_model(authors_files["plain"])
    x = _bags(1, seed=72)
    emb = torch.randn(4, model.embedding_dim, generator=torch.Generator().manual_seed(73))
    with torch.inference_mode():
        for a, b in zip(model.forward_bags(x), plain.forward_bags(x)):
            assert torch.equal(a, b)
        slide = model.forward_slide(emb)
        for a, b in zip(slide, plain.forward_slide(emb)):
            assert torch.equal(a, b)
        expected = plain_slide(best, emb, 0.1)  # the independent plain implementation
    torch.testing.assert_close(slide.slide_logits, expected["slide_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slide.gamma, expected["gamma"], atol=1e-5, rtol=1e-5)
    # which="last" takes model_state_dict
    last_model = load_model(path, which="last")
    last_state = last.state_dict()
    for key, value in last_model.state_dict().items():
        assert torch.equal(value, last_state[reference_key(key)]), key


def test_data_parallel_keys_and_truncated_file(authors_files, tmp_path):
    best, last = authors_files["best"], authors_files["last"]
    ckpt = _authors_checkpoint(last.train(), best)
    last.eval()
    ckpt["model_state_dict"] = {k.replace("upstream.", "upstream.module.", 1): v
                                for k, v in ckpt["model_state_dict"].items()}
    path = tmp_path / "dp.pth"
    torch.save(ckpt, path)
    model = load_model(path, which="last")
    assert torch.equal(model.upstream.trunk.stem_conv.weight, last.upstream.conv1.weight)
    data = path.read_bytes()
    for frac in (0.3, 0.9):
        cut = tmp_path / f"cut{frac}.pth"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_model(cut)
        assert cut.name in str(info.value)
    legacy = tmp_path / "legacy.pth"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    ldata = legacy.read_bytes()
    cut = tmp_path / "legacy-cut.pth"
    cut.write_bytes(ldata[: len(ldata) - 100])  # tensor data missing at the end
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(cut)


# ======================================================================================
# Hostile pickles: refused with the global named, nothing run
# ======================================================================================
def _touch_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __call__(self, *args):  # pickle insists that a reduce "function" is callable
        raise AssertionError("never called")

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    cmd = f"touch {marker}"
    return {
        "posix.system": _Reduce(os.system, (cmd,)),
        "builtins.eval": _Reduce(builtins.eval, (_touch_code(marker),)),
        "builtins.exec": _Reduce(builtins.exec, (_touch_code(marker),)),
        "subprocess.Popen": _Reduce(subprocess.Popen, (["touch", str(marker)],)),
        # getattr(__import__('os'), 'system')('touch marker'): getattr is allowed (inert), __import__ not
        "builtins.__import__": _Reduce(_Reduce(getattr, (_Reduce(builtins.__import__, ("os",)), "system")), (cmd,)),
    }


def test_payloads_are_live_under_a_plain_unpickler(tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_payloads(control)["builtins.exec"], protocol=2))
    assert control.exists()


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                  "builtins.__import__"])
def test_hostile_pickles_are_refused_with_the_global_named(authors_files, tmp_path, name):
    best, last = authors_files["best"], authors_files["last"]
    marker = tmp_path / "marker"
    payload = _payloads(marker)[name]
    ckpt = _authors_checkpoint(last.train(), best)
    last.eval()
    files = []
    for where in ("scheduler1_state_dict", "up_weight"):
        bad = dict(ckpt)
        bad[where] = {"anneal_func": payload} if where.startswith("scheduler") else payload
        for legacy in (False, True):
            path = tmp_path / f"evil-{where}-{'legacy' if legacy else 'zip'}.pth"
            torch.save(bad, path, _use_new_zipfile_serialization=not legacy)
            files.append(path)
    raw = tmp_path / "evil.pkl"  # a bare pickle stream, not even a torch container
    raw.write_bytes(pickle.dumps({"best_pth": payload}, protocol=2))
    files.append(raw)
    for path in files:
        with pytest.raises(CheckpointError, match="refused") as info:
            load_model(path)
        msg = str(info.value)
        assert str(path) in msg and name in msg, msg
        assert not marker.exists()


def _raw(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + b"."


def test_known_globals_cannot_be_called_or_abused(tmp_path):
    """Only the listed names resolve, to inert tokens: calling what getattr returned, building
    objects of other kinds, extension codes and appending to non-lists are all refused."""
    marker = tmp_path / "marker"
    cases = {
        # getattr(Adam, '__init__')(...): the result of an allowed call is a record, not callable
        "call": (b"c__builtin__\ngetattr\n(ctorch.optim.adam\nAdam\nS'__init__'\ntR(S'x'\ntR", "not a known"),
        # a known class through the INST opcode: an inert record (here: not a torch.save header)
        "inst": (b"(S'x'\nitorch.optim.sgd\nSGD\n", "not a readable torch checkpoint"),
        # an extension code (copyreg registry), never resolved
        "ext": (b"\x82\x01", "extension"),
        # a tensor-rebuild function with arguments that are not a storage
        "rebuild": (b"ctorch._utils\n_rebuild_tensor_v2\n(S'storage'\nK\x00)))\x89}tR", "refused"),
        # appending to something that is not a list
        "append": (b"ccollections\nOrderedDict\n)R(S'x'\ne", "refused"),
        # an unknown module
        "module": (b"cnapari_mran.cli\nmain\n)R", "napari_mran.cli.main"),
    }
    for name, (ops, reason) in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(_raw(ops))
        with pytest.raises(CheckpointError, match=reason) as info:
            load_model(path)
        assert path.name in str(info.value)
    assert not marker.exists()
