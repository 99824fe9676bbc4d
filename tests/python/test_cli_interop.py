"""Keys and fingerprints shared with the command line, both ways: a key made in Python unlocks
the TorchScript file of the same model with `corelocker unlock`, a key made by `corelocker lock`
unlocks in Python, and both restore the fingerprint `corelocker fingerprint` prints."""
import torch

import corelocker
from nets import resnet


def save_script(model, path):
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def test_python_key_unlocks_with_the_cli(tmp_path, cli):
    m = resnet()
    original = save_script(m, tmp_path / "model.pt")
    assert cli.fingerprint(original) == corelocker.fingerprint(m)
    key = corelocker.lock(m)
    locked = save_script(m, tmp_path / "locked.pt")
    assert cli.fingerprint(locked) == key.locked_fingerprint
    key.save(tmp_path / "model.clk", passphrase="pw", kdf="min")
    (tmp_path / "pw.txt").write_text("pw\n")
    cli.run("unlock", "--model", locked, "--key", tmp_path / "model.clk", "--passphrase-file", tmp_path / "pw.txt",
            "--out", tmp_path / "restored.pt")
    assert cli.fingerprint(tmp_path / "restored.pt") == cli.fingerprint(original) == key.original_fingerprint


def test_cli_key_unlocks_in_python(tmp_path, cli):
    m = resnet()
    fp = corelocker.fingerprint(m)
    original = save_script(m, tmp_path / "model.pt")
    (tmp_path / "pw.txt").write_text("pw\n")
    cli.run("lock", "--model", original, "--ratio", "0.05", "--out", tmp_path / "locked.pt", "--key-out",
            tmp_path / "k.clk", "--passphrase-file", tmp_path / "pw.txt", "--kdf", "min")
    key = corelocker.load_key(tmp_path / "k.clk", passphrase="pw")
    # The locked TorchScript file, as torch.jit.load gives it.
    lm = torch.jit.load(str(tmp_path / "locked.pt"))
    assert corelocker.fingerprint(lm) == key.locked_fingerprint
    with corelocker.unlocked(lm, key):
        assert corelocker.fingerprint(lm) == fp
    corelocker.unlock(lm, key)
    assert corelocker.fingerprint(lm) == fp == cli.fingerprint(original)
    # Its weights in the owner's nn.Module class.
    other = resnet(seed=4)
    other.load_state_dict(torch.jit.load(str(tmp_path / "locked.pt")).state_dict())
    corelocker.unlock(other, key)
    assert corelocker.fingerprint(other) == fp


def test_python_and_cli_lock_the_same_units(tmp_path, cli):
    m = resnet()
    original = save_script(m, tmp_path / "model.pt")
    cli.run("lock", "--model", original, "--criterion", "bn", "--ratio", "0.1", "--out", tmp_path / "locked.pt",
            "--key-out", tmp_path / "k.clk")
    cli_key = corelocker.load_key(tmp_path / "k.clk")
    key = corelocker.lock(m, ratio=0.1, criterion="bn")
    assert key.locked_fingerprint == cli_key.locked_fingerprint == cli.fingerprint(tmp_path / "locked.pt")
    assert (key.units, key.values, key.scope) == (cli_key.units, cli_key.values, cli_key.scope)


def test_error_messages_are_the_cli_messages(tmp_path, cli):
    a, b = resnet(0), resnet(1)
    key_a = corelocker.lock(a)
    key_a.save(tmp_path / "a.clk", passphrase="right", kdf="min")
    corelocker.lock(b)
    save_script(b, tmp_path / "b.pt")
    # A key of another model.
    (tmp_path / "right.txt").write_text("right\n")
    p = cli.run("unlock", "--model", tmp_path / "b.pt", "--key", tmp_path / "a.clk", "--passphrase-file",
                tmp_path / "right.txt", "--out", tmp_path / "x.pt", expect=1)
    try:
        corelocker.unlock(b, corelocker.load_key(tmp_path / "a.clk", passphrase="right"))
        raise AssertionError("KeyMismatch expected")
    except corelocker.KeyMismatch as e:
        assert p.stderr.strip() == f"corelocker: error: {e}"
    assert not (tmp_path / "x.pt").exists()
    # A wrong passphrase: exit code 3.
    (tmp_path / "wrong.txt").write_text("wrong\n")
    p = cli.run("unlock", "--model", tmp_path / "b.pt", "--key", tmp_path / "a.clk", "--passphrase-file",
                tmp_path / "wrong.txt", "--out", tmp_path / "x.pt", expect=3)
    try:
        corelocker.load_key(tmp_path / "a.clk", passphrase="wrong")
        raise AssertionError("AuthenticationError expected")
    except corelocker.AuthenticationError as e:
        assert p.stderr.strip() == f"corelocker: {e}"
