"""docs/python.md's complete example runs as written (train, lock, torch.save the locked state
dict, unlock in memory with an encrypted key) and does what its printout says."""
import os
import pathlib
import re
import subprocess
import sys

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"


def test_the_complete_example(tmp_path):
    text = DOC.read_text()
    block = re.search(r"<!-- example: begin -->\n```python\n(.*?)```\n<!-- example: end -->", text, re.S)
    assert block, "docs/python.md lost its example markers"
    (tmp_path / "example.py").write_text(block.group(1))
    p = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ":".join(sys.path)})
    assert p.returncode == 0, p.stderr
    acc = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+):\s+([\d.]+)%", p.stdout, re.M)}
    assert acc["trained"] > 75 and acc["unlocked"] == acc["trained"], p.stdout
    assert acc["locked"] < 20 and acc["after"] == acc["locked"] and acc["attacker"] < 20, p.stdout
    fps = re.findall(r"fingerprint ([0-9a-f]{16})", p.stdout)
    assert len(fps) == 2 and fps[0] == fps[1]
    assert (tmp_path / "locked.pt").exists() and (tmp_path / "model.clk").exists()
