"""benchmarks/gpu_check.sh on a machine without a GPU (every CI machine): it still writes its
JSON, with the environment it found and each GPU check skipped with what is missing and the
fix, rather than failing half-way."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_every_check_is_reported_with_the_fix(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--work", str(tmp_path / "work")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    checks = data["checks"]
    assert checks["env"]["cuda"]["cuda"] is False
    assert checks["env"]["imports"]["accelerate"]["ok"] is True  # a core dependency
    assert set(checks) == {"env", "quickstart_vllm", "lora_push_vllm", "rollout_1.5b", "accelerate"}
    for name in ("quickstart_vllm", "lora_push_vllm", "rollout_1.5b", "accelerate"):
        assert checks[name]["status"] == "skipped" and checks[name]["missing"] == "a CUDA GPU"
        assert "CUDA build of torch" in checks[name]["fix"]
    assert sum(data["limits_s"][k] for k in ("env", "quickstart_vllm", "lora_push_vllm", "rollout_1.5b")) \
        + 4 * data["limits_s"]["accelerate"] <= 600
    # the opt-in checks (multi-turn episodes on vLLM, async through a vLLM server) only when named
    extra = tmp_path / "extra.json"
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--work", str(tmp_path / "work"),
                        "--only", "tools_vllm,async_server_vllm"], cwd=ROOT,
                       env={**env, "OUT": str(extra)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    checks = json.loads(extra.read_text())["checks"]
    assert set(checks) == {"env", "tools_vllm", "async_server_vllm"}
    assert all(checks[n]["status"] == "skipped" and checks[n]["missing"] == "a CUDA GPU"
               for n in ("tools_vllm", "async_server_vllm"))
