"""Runs `scripts/gpu_check.sh` in its dry mode (the mode it takes without a GPU), so the GPU
check cannot rot: the wrapper starts, the GPU-only parts say they are skipped, the equality part
runs at tiny sizes with fused == scan, and the JSON and table are written."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_wrapper_starts_the_script():
    proc = subprocess.run([str(ROOT / "scripts/gpu_check.sh"), "--help"], capture_output=True,
                          text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "--dry" in proc.stdout and "--budget_s" in proc.stdout


def test_dry_mode_skips_the_gpu_only_parts_and_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert _gpu_check().main(["--dry", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    for line in ("skipped: dry mode: the CPU suite runs these", "skipped: cudnn needs a GPU",
                 "skipped: dry mode: the benchmark needs a GPU",
                 "skipped: dry mode: training runs"):
        assert line in printed
    results = json.loads(out.read_text())
    assert results["dry"] is True
    diffs = results["equality"]["lstm fused vs scan"]
    assert set(diffs) == {"ys", "carry", "grads"}
    assert max(diffs.values()) < 1e-5, diffs
    # bfloat16 is close to float32, not equal (the row measures something).
    assert 0 < results["equality"]["lstm bf16 Spec vs f32"]["ys"] < 5e-2
    table = out.with_suffix(".md").read_text()
    assert "| lstm cudnn vs scan | skipped: cudnn needs a GPU |" in table
