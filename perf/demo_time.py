"""Issue 6's figures: `driftkit demo` cold and warm wall time, peak RSS, seconds per step, and the
demo's own findings (TI, PCA-shift distance per domain, mean KL, shifted-token fraction).

"Cold" means nothing cached: a fresh output folder *and* a fresh model cache (``DRIFTKIT_CACHE``
pointed at an empty temp folder), so the GGUF -> safetensors conversion of the default model is
included. "Warm" reruns the same command on the finished folder. Each run is a child process;
peak RSS is the child's ``ru_maxrss``. No assertions: timings depend on the machine and its load.

    .venv/bin/python perf/demo_time.py            # the full demo (~12-13 min on an idle 2-core CPU)
    .venv/bin/python perf/demo_time.py --quick    # the tiny-model smoke version (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def driftkit_cmd() -> list[str]:
    """The installed ``driftkit`` script next to this interpreter (what ``make demo`` runs)."""
    exe = Path(sys.executable).with_name("driftkit")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("driftkit")
    if not found:
        raise SystemExit(
            "driftkit is not installed in this environment: run `make install` (or pip install -e .) first."
        )
    return [found]


def timed_run(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process, its output sent to ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(args, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}; see {log}.")
    # RUSAGE_CHILDREN is the largest RSS of any child waited for so far: read after the cold run
    # (the first child), it is that run's peak.
    rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss_mib


def findings(out: Path) -> dict[str, Any]:
    study = json.loads((out / "report" / "study.json").read_text())
    res: dict[str, Any] = {}
    for m in study["models"]:
        if m == "base":
            continue
        dist = study["distributions"].get(m, {})
        res[m] = {
            "ti": (study["transfer"].get("models", {}).get(m) or {}).get("ti"),
            "pca_shift_distance": study["representations"].get(m, {}).get("pca_distance"),
            "kl_forward": dist.get("kl", {}).get("kl_forward"),
            "shifted_fraction": dist.get("rank", {}).get("shifted"),
            "unshifted_fraction": dist.get("rank", {}).get("unshifted"),
        }
    if study["transfer"].get("error"):
        res["ti_error"] = study["transfer"]["error"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="time `driftkit demo --quick` (tiny random model)")
    ap.add_argument(
        "--keep", type=Path, default=None, help="run in this folder and keep it (default: a temp folder, removed)"
    )
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    a = ap.parse_args()

    work = a.keep or Path(tempfile.mkdtemp(prefix="driftkit-demo-time-"))
    work.mkdir(parents=True, exist_ok=True)
    out, cache = work / "demo-out", work / "model-cache"
    for p in (out, cache):
        shutil.rmtree(p, ignore_errors=True)
    env = {**os.environ, "DRIFTKIT_CACHE": str(cache)}
    cmd = [*driftkit_cmd(), "demo", "--out", str(out), *(["--quick"] if a.quick else [])]
    load0 = os.getloadavg()[0]
    try:
        cold, cold_rss = timed_run(cmd, env, work / "cold.log")
        warm, _ = timed_run(cmd, env, work / "warm.log")
        manifest = json.loads((out / "manifest.json").read_text())
        steps = {sid: e.get("seconds") for sid, e in manifest["steps"].items()}
        figures = {
            "demo": "quick" if a.quick else "full",
            "cold_wall_s": round(cold, 1),
            "warm_wall_s": round(warm, 1),
            "cold_peak_rss_mib": round(cold_rss),
            "steps_s": steps,
            "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "findings": findings(out),
        }
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"driftkit demo{' --quick' if a.quick else ''}: cold {int(cold // 60)} min {cold % 60:04.1f} s "
        f"({cold:.1f} s, model conversion included), warm {warm:.1f} s, peak RSS {cold_rss:.0f} MiB "
        f"(load average {figures['load_average_start_end'][0]} -> {figures['load_average_start_end'][1]})"
    )
    for sid, sec in steps.items():
        print(f"  {sid:<22} {sec if sec is not None else '-':>8} s")
    for m, f in figures["findings"].items():
        if m == "ti_error":
            print(f"  TI: {f}")
            continue
        pca = ", ".join(f"{d} {v:.2f}" for d, v in sorted((f["pca_shift_distance"] or {}).items()))
        ti = f["ti"] or {}
        ti_txt = (
            ", ".join(f"TI_{g} {'undefined' if v is None else f'{v:.1f}'}" for g, v in ti.items()) or "TI undefined"
        )
        print(
            f"  {m}: {ti_txt}; PCA shift {pca}; KL {f['kl_forward']:.3f} nats; shifted "
            f"{100 * f['shifted_fraction']:.1f}% "
            f"(unshifted {100 * f['unshifted_fraction']:.1f}%)"
        )
    if a.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
