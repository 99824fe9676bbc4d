"""Round trips in memory: lock, key, unlock, on nn.Modules, ScriptModules and state dicts."""
import copy

import pytest
import torch
import torch.nn as nn

import corelocker
from nets import inputs, resnet, same, snapshot


def zeros(model):
    return sum(int((p == 0).sum()) for p in model.parameters())


def test_lock_in_place_and_unlock_restores_every_bit():
    m = resnet()
    before, fp = snapshot(m), corelocker.fingerprint(m)
    x = inputs()
    y = m(x)
    key = corelocker.lock(m, ratio=0.05)
    assert key.original_fingerprint == fp
    assert corelocker.fingerprint(m) == key.locked_fingerprint != fp
    assert zeros(m) >= key.values > 0
    assert not torch.equal(m(x), y)
    assert corelocker.unlock(m, key) is m
    assert same(m, before)
    assert corelocker.fingerprint(m) == fp
    assert torch.equal(m(x), y)


def test_key_describes_the_lock():
    m = resnet()
    n = sum(p.numel() for p in m.parameters())
    key = corelocker.lock(m, ratio=0.05)
    assert (key.criterion, key.scope, key.fill, key.include_io) == ("l1", "global", "zero", True)  # the default lock
    assert key.ratio == 0.05 and key.tier == 1 and key.tiers == 1
    stats = key.stats
    assert stats["units"] == key.units > 0
    assert stats["values"] == key.values
    assert stats["parameters"] == n
    assert stats["param_fraction"] == pytest.approx(key.values / n)
    names = set(m.state_dict())
    assert key.entries and all(e["tensor"] in names for e in key.entries)
    assert sum(e["units"] * e["unit_size"] for e in key.entries) == key.values
    assert key.nbytes > 4 * key.values
    assert len(key.key_id) == 32 and len(key.locked_fingerprint) == 64
    assert "criterion='l1'" in repr(key)


@pytest.mark.parametrize("criterion,scope,fill", [
    ("l1", "layer", "zero"), ("bn", "global", "zero"), ("random", "layer", "zero"), (None, "global", "decoy"),
])
def test_criteria_round_trip(criterion, scope, fill):
    m = resnet(width=8)
    before = snapshot(m)
    key = corelocker.lock(m, ratio=0.1, criterion=criterion, fill=fill, seed=3)
    assert key.criterion == (criterion or "l1") and key.scope == scope and key.fill == fill
    assert key.include_io == (criterion is None)  # the paper's criteria leave the first and last layer alone
    if criterion == "random":
        assert key.seed == 3
    if criterion == "bn":  # gamma, beta and the filter of the conv feeding the BatchNorm
        assert any(e["tensor"].endswith("bn1.weight") for e in key.entries)
        assert any(e["tensor"].endswith("conv1.weight") and e["unit_size"] == e["shape"][1] * 9 for e in key.entries)
    assert not same(m, before)
    corelocker.unlock(m, key)
    assert same(m, before)


def test_options_are_passed_through():
    m = resnet()
    key = corelocker.lock(m, ratio=0.02, criterion="l1", scope="global", include_io=True)
    assert (key.scope, key.include_io, key.ratio) == ("global", True, 0.02)
    corelocker.unlock(m, key)
    key = corelocker.lock(m, ratio=0.02, include_io=False)
    assert not key.include_io
    assert all(not e["tensor"].startswith(("conv.", "fc.")) for e in key.entries)


def test_keep_leaves_the_named_layers_alone():
    m = resnet()
    before = snapshot(m)
    key = corelocker.lock(m, ratio=0.2, include_io=True, keep=["layers.0.*", "fc"])
    tensors = {e["tensor"] for e in key.entries}
    assert "conv.weight" in tensors and "layers.1.conv1.weight" in tensors
    assert not any(t.startswith(("layers.0.", "fc.")) for t in tensors)
    for name, p in m.named_parameters():
        if name.startswith(("layers.0.", "fc.")):
            assert torch.equal(p, before[name]), name
    corelocker.unlock(m, key)
    assert same(m, before)
    with pytest.raises(corelocker.UsageError, match="'nosuch': matches no layer"):
        corelocker.lock(m, keep="nosuch")
    assert same(m, before)


def test_script_module_shares_tensors_with_the_module():
    m = resnet()
    sm = torch.jit.script(m)
    params = dict(m.named_parameters())
    for name, p in sm.named_parameters():
        assert p.data_ptr() == params[name].data_ptr()
    buffers = dict(m.named_buffers())
    for name, b in sm.named_buffers():
        assert b.data_ptr() == buffers[name].data_ptr()
    # Locking the ScriptModule locks the nn.Module it came from.
    fp = corelocker.fingerprint(m)
    key = corelocker.lock(sm)
    assert corelocker.fingerprint(m) == key.locked_fingerprint != fp
    corelocker.unlock(m, key)
    assert corelocker.fingerprint(sm) == fp


def test_fingerprint_is_the_same_for_module_script_and_state_dict():
    m = resnet()
    fp = corelocker.fingerprint(m)
    assert len(fp) == 64
    assert corelocker.fingerprint(torch.jit.script(m)) == fp
    assert corelocker.fingerprint(m.state_dict()) == fp
    assert corelocker.fingerprint(resnet(seed=1)) != fp


def test_state_dict_lock_returns_a_locked_copy():
    m = resnet()
    fp = corelocker.fingerprint(m)
    sd = m.state_dict()
    locked, key = corelocker.lock(sd, ratio=0.05, structure=resnet(seed=5))
    assert corelocker.fingerprint(sd) == fp == corelocker.fingerprint(m)  # the source is untouched
    assert list(locked) == list(sd)
    assert corelocker.fingerprint(locked) == key.locked_fingerprint
    # The same units as locking the module itself.
    assert corelocker.lock(copy.deepcopy(m), ratio=0.05).locked_fingerprint == key.locked_fingerprint
    # Shipped as a state dict, unlocked in another instance of the architecture.
    other = resnet(seed=9)
    other.load_state_dict(locked)
    corelocker.unlock(other, key)
    assert corelocker.fingerprint(other) == fp
    # Or unlocked as a dict, in place.
    assert corelocker.fingerprint(corelocker.unlock(locked, key)) == fp


def test_state_dict_lock_needs_a_structure():
    with pytest.raises(corelocker.UsageError, match="structure="):
        corelocker.lock(resnet().state_dict())


def test_save_and_load_keys(tmp_path):
    m = resnet()
    before = snapshot(m)
    key = corelocker.lock(m)
    plain = tmp_path / "plain.clk"
    assert key.save(plain) == plain.stat().st_size == key.nbytes
    sealed = tmp_path / "sealed.clk"
    key.save(str(sealed), passphrase="correct horse", kdf="min")
    loaded = corelocker.load_key(sealed, passphrase="correct horse")
    assert loaded.encryption == "passphrase" and loaded.stats is None
    assert (loaded.key_id, loaded.locked_fingerprint, loaded.values) == (key.key_id, key.locked_fingerprint, key.values)
    with pytest.raises(corelocker.AuthenticationError):
        corelocker.load_key(sealed, passphrase="wrong")
    with pytest.raises(corelocker.UsageError):
        corelocker.load_key(sealed)
    secret = bytes(range(32))
    data = key.to_bytes(secret=secret)
    with pytest.raises(corelocker.AuthenticationError):
        corelocker.key_from_bytes(data, secret=bytes(32))
    corelocker.unlock(m, corelocker.key_from_bytes(data, secret=secret))
    assert same(m, before)
    # Keys are bound to the weights (fingerprints), not to a lock: a second lock of the same weights
    # extracts the same units, and the first key opens it.
    second = corelocker.lock(m)
    assert second.key_id != key.key_id and second.locked_fingerprint == key.locked_fingerprint
    corelocker.unlock(m, corelocker.load_key(plain))
    assert same(m, before)


def test_wrong_key_is_a_key_mismatch_and_changes_nothing():
    a, b = resnet(seed=0), resnet(seed=1)
    key_a = corelocker.lock(a)
    corelocker.lock(b)
    locked_b = snapshot(b)
    with pytest.raises(corelocker.KeyMismatch, match="key belongs to another model"):
        corelocker.unlock(b, key_a)
    assert same(b, locked_b)
    corelocker.unlock(a, key_a)
    with pytest.raises(corelocker.KeyMismatch, match="already unlocked"):
        corelocker.unlock(a, key_a)


def test_errors_are_the_library_errors(tmp_path):
    m = resnet()
    before = snapshot(m)
    with pytest.raises(corelocker.UsageError, match="ratio"):
        corelocker.lock(m, ratio=1.5)
    with pytest.raises(ValueError):  # UsageError is a ValueError too
        corelocker.lock(m, criterion="l2")
    with pytest.raises(corelocker.UsageError):
        corelocker.lock(m, fill="noise")
    assert same(m, before)
    key = corelocker.lock(m)
    path = tmp_path / "k.clk"
    key.save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(corelocker.FormatError):
        corelocker.load_key(path)
    with pytest.raises(corelocker.IoError):
        corelocker.load_key(tmp_path / "missing.clk")
    with pytest.raises(TypeError):
        corelocker.unlock(m, "k.clk")
    assert issubclass(corelocker.KeyMismatch, corelocker.Error)
    assert corelocker.KeyMismatch.__module__ == "corelocker"


class Unscriptable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
        self.hooks = [lambda t: t * 1.0]

    def forward(self, x):
        for h in self.hooks:  # a list of Python callables: torch.jit.script cannot compile this
            x = h(x)
        return self.body(x)


def test_unscriptable_module_is_traced_with_example_inputs():
    m = Unscriptable().eval()
    before = snapshot(m)
    with pytest.raises(corelocker.UsageError, match="example_inputs"):
        corelocker.lock(m)
    key = corelocker.lock(m, ratio=0.1, example_inputs=inputs(2))
    assert [l["kind"] for l in corelocker.structure(m, example_inputs=inputs(2))] == ["conv2d", "linear"]
    assert not same(m, before)
    corelocker.unlock(m, key)
    assert same(m, before)


def test_structure_is_read_from_the_graph():
    layers = corelocker.structure(resnet())
    assert layers[0]["name"] == "conv" and layers[0]["kind"] == "conv2d"
    assert layers[1]["name"] == "bn" and layers[1]["producer"] == 0
    assert layers[-1]["name"] == "fc" and layers[-1]["kind"] == "linear"


def test_calibrate_with_a_callback():
    m = resnet(width=8)
    fp = corelocker.fingerprint(m)
    x = inputs(64)
    with torch.no_grad():
        reference = m(x)
    seen = []

    def agreement(model):  # 100 for the original's outputs, 0 for outputs as far off as zeros
        seen.append(corelocker.fingerprint(model))
        with torch.no_grad():
            return max(0.0, 100.0 * (1 - float((model(x) - reference).norm() / reference.norm())))

    result = corelocker.calibrate(m, target=(30, 70), evaluate=agreement, max_evaluations=12)
    assert corelocker.fingerprint(m) == fp  # ends as it started
    assert seen and fp not in seen  # every call saw a locked model
    assert len(result.probes) == len(seen)
    assert result.found and result.status == "found", result.explanation
    assert 30 <= result.accuracy <= 70 and 0 < result.ratio <= 1
    assert [p["ratio"] for p in result.probes][:2] == [0.005, 0.02]  # the command line's search
    corelocker.lock(m, ratio=result.ratio)
    assert agreement(m) == result.accuracy  # the same units, the same answer


def test_calibrate_restores_the_model_when_the_callback_raises():
    m = resnet()
    fp = corelocker.fingerprint(m)

    def broken(model):
        raise KeyError("no data")

    with pytest.raises(KeyError):
        corelocker.calibrate(m, target=(40, 60), evaluate=broken)
    assert corelocker.fingerprint(m) == fp


def test_reestimate_bn_matches_pytorch_update_bn():
    m = resnet()
    corelocker.lock(m, criterion="l1")
    params = {k: v.clone() for k, v in m.named_parameters()}
    loader = [(inputs(32, seed=s), torch.zeros(32)) for s in range(4)]
    peer = copy.deepcopy(m)
    result = corelocker.reestimate_bn(m, loader)
    assert result == {"layers": 9, "images": 128, "batches": 4}
    assert not m.training  # modes as they were
    torch.optim.swa_utils.update_bn(loader, peer)  # PyTorch's own: cumulative average, momentum None
    for (name, b), (_, pb) in zip(m.named_buffers(), peer.named_buffers()):
        if name.endswith(("running_mean", "running_var")):
            assert torch.allclose(b, pb, rtol=1e-4, atol=1e-5), name
    assert all(torch.equal(v, params[k]) for k, v in m.named_parameters())
    assert corelocker.reestimate_bn(m, loader, max_batches=1)["images"] == 32


def test_prune():
    m = resnet()
    r = corelocker.prune(m, 0.2)
    assert r["pruned"] == round(0.2 * r["candidates"])
    weights = [p for n, p in m.named_parameters() if p.dim() > 1]
    assert sum(int((w == 0).sum()) for w in weights) >= r["pruned"]
