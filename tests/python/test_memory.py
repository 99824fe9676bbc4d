"""No copy of the weights: a lock of a 128 MiB model (and of vgg19, issue 21's case) changes the model's own tensors and keeps
only the key; `unlocked` keeps one more key's worth while it lasts. Measured in a process of its
own (memory_probe.py); docs/python.md has the numbers."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

MIB = 2**20


def probe(kind, mib):
    script = pathlib.Path(__file__).with_name("memory_probe.py")
    p = subprocess.run([sys.executable, str(script), kind, str(mib)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ":".join(sys.path)})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("kind", ["conv", "mlp", "vgg19"])
def test_a_lock_keeps_only_the_key(kind):
    r = probe(kind, 128)
    assert r["same_tensors"] and r["locked"]
    assert r["weights"] > (76 if kind == "vgg19" else 120) * MIB
    # What stays resident is the key, held as its file holds it (values, and unit indices packed
    # as LEB128 gaps), not a copy of the weights.
    assert r["rss_growth_trimmed"] <= 1.05 * r["key_bytes"] + MIB / 4, r
    # Unlocked for a while: the key's values go in, the locked values they replace are kept aside.
    assert r["unlocked_peak_growth"] <= 2 * r["key_bytes"] + MIB, r
    # Issue 21's bar: the peak while locking is at most the key's size plus 10%. No full ranking
    # of the units (that was 1.2-1.5x the weights), no copy, no 8-byte index per unit.
    assert r["peak_growth"] <= 1.10 * r["key_bytes"], r
