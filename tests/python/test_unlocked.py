"""`with corelocker.unlocked(model, key):` restores in memory and always locks again."""
import pytest
import torch

import corelocker
from nets import inputs, resnet, same, snapshot


def test_unlocked_restores_inside_and_locks_again_after():
    m = resnet()
    x = inputs()
    original, y = corelocker.fingerprint(m), m(x)
    key = corelocker.lock(m)
    locked = snapshot(m)
    with corelocker.unlocked(m, key) as inside:
        assert inside is m
        assert corelocker.fingerprint(m) == original
        assert torch.equal(m(x), y)
    assert same(m, locked)
    assert corelocker.fingerprint(m) == key.locked_fingerprint


def test_unlocked_locks_again_after_an_exception():
    m = resnet()
    key = corelocker.lock(m)
    locked = snapshot(m)
    with pytest.raises(ZeroDivisionError):
        with corelocker.unlocked(m, key):
            assert corelocker.fingerprint(m) == key.original_fingerprint
            1 / 0
    assert same(m, locked)
    with pytest.raises(KeyboardInterrupt):  # BaseExceptions too
        with corelocker.unlocked(m, key):
            raise KeyboardInterrupt
    assert same(m, locked)


def test_unlocked_puts_decoys_back_exactly():
    m = resnet()
    key = corelocker.lock(m, fill="decoy")
    locked = snapshot(m)
    for _ in range(2):
        with corelocker.unlocked(m, key):
            assert corelocker.fingerprint(m) == key.original_fingerprint
        assert same(m, locked)


def test_unlocked_works_on_script_modules_and_state_dicts():
    m = resnet()
    key = corelocker.lock(m)
    sm = torch.jit.script(m)
    with corelocker.unlocked(sm, key):
        assert corelocker.fingerprint(m) == key.original_fingerprint
    sd = m.state_dict()
    with corelocker.unlocked(sd, key):
        assert corelocker.fingerprint(sd) == key.original_fingerprint
    assert corelocker.fingerprint(m) == key.locked_fingerprint


def test_unlocked_with_a_wrong_key_changes_nothing():
    a, b = resnet(0), resnet(1)
    key_a = corelocker.lock(a)
    corelocker.lock(b)
    locked_b = snapshot(b)
    with pytest.raises(corelocker.KeyMismatch, match="another model"):
        with corelocker.unlocked(b, key_a):
            pytest.fail("the block must not run")
    assert same(b, locked_b)


def test_a_model_changed_inside_is_reported_and_its_units_locked_again():
    m = resnet()
    key = corelocker.lock(m)
    with pytest.raises(corelocker.Error, match="model changed inside"):
        with corelocker.unlocked(m, key):
            m.train()
            m(inputs(8))  # updates BatchNorm running statistics
            m.eval()
    params = dict(m.named_parameters())
    for e in key.entries:  # zero fill: every extracted unit is zero again
        view = params[e["tensor"]].detach().reshape(-1, e["unit_size"])
        assert int((view.abs().sum(1) == 0).sum()) >= e["units"]
    # With an exception in flight, the change is a warning and the block's exception goes on.
    m2 = resnet(3)
    key2 = corelocker.lock(m2)
    with pytest.warns(RuntimeWarning, match="model changed inside"), pytest.raises(ValueError, match="inside"):
        with corelocker.unlocked(m2, key2):
            with torch.no_grad():
                m2.bn.running_mean.add_(1)
            raise ValueError("inside")
