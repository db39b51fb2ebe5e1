"""The README's quickstart runs as written (CPU interpreter tier and GPU), and its two first commands stay."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _quickstart() -> str:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_starts_with_make_demo_and_make_test():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]


def test_quickstart_runs():
    code = _quickstart()
    assert len(code.strip().splitlines()) <= 22  # "a 20-line quickstart", imports and blank lines aside
    ns = {}
    exec(compile(code, "README.md quickstart", "exec"), ns)
    out, lse, tokens = ns["out"], ns["lse"], ns["tokens"]
    assert out.shape == (10, 8, 64) and lse.shape == (10, 8) and torch.isfinite(out.float()).all()
    assert tokens.shape == (2,) and ((tokens >= 0) & (tokens < 1000)).all()
