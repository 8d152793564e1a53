"""The README's Python API works any number of times in one process, in any import order.

Each case runs in a fresh interpreter: the bug this guards against (``driftkit.capture`` turning
into a module after its first use) depends on what was imported before, which one pytest process
cannot reset.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
{imports}
import driftkit
model, prompts, out = sys.argv[1], sys.argv[2], sys.argv[3]
paths = []
for i in range(2):  # the second call is what used to fail
    cfg = driftkit.CaptureConfig(model=model, prompts=prompts, layers="0,1", out=f"{{out}}/c{{i}}.h5")
    paths.append(driftkit.capture(cfg))
for i in range(2):
    rep = driftkit.compare(paths, analyses=["kl"])
with driftkit.CaptureReader(paths[0]) as r:
    x = r.read("sites/residual.1", r.offsets[0], r.offsets[1])
    logits = r.unembedding().logits(r.read("final/hidden", 0, 4))
print(json.dumps({{"kl": rep.to_dict()["analyses"]["kl"]["summary"]["kl_forward"], "x": list(x.shape),
                  "logits": list(logits.shape)}}))
"""


@pytest.mark.parametrize(
    "imports",
    [
        "",
        "import driftkit.capturing.engine\nfrom driftkit.comparing import compare",
    ],
    ids=["plain", "subpackages-first"],
)
def test_capture_and_compare_twice_in_one_process(
    imports: str, tiny_model: Path, tiny_prompts: Path, tmp_path: Path
) -> None:
    code = textwrap.dedent(SCRIPT.format(imports=imports))
    r = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model), str(tiny_prompts), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["kl"] == 0.0  # the same model captured twice
    assert got["x"][1] == 64 and got["logits"][0] == 4
