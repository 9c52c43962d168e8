"""The OpenFlamingo peer environment and the worker mechanism shared by the comparison benchmarks.

OpenFlamingo (PyPI `open-flamingo` 2.0.1) needs torchvision and open_clip, and pins torch 2.0.1. torchvision
must not be installed in the project's main environment, so the comparison runs in a separate virtual
environment that holds BOTH models on the same torch build:

    python3 -m venv ~/.cache/cosmo_vl/venvs/openflamingo
    pip install torch==2.14.1 torchvision==0.29.1          # a matching pair; the CUDA build also runs on CPU
    pip install --no-deps open-flamingo==2.0.1             # skip its torch==2.0.1 pin
    pip install open_clip_torch einops einops-exts transformers==5.23.0 pillow datasets accelerate peft \
        tokenizers safetensors huggingface_hub psutil
    pip install --no-deps -e <this repository>             # cosmo_vl itself, in development mode

`ensure_peer_venv()` runs exactly these steps once (printing progress) and reuses the venv afterwards; the
benchmarks then re-run themselves inside it with `--worker ...` so that CosMo and OpenFlamingo are measured by
the same interpreter, torch and transformers. Each measurement is a separate worker process, so the peak
resident set size of one measurement is not polluted by another.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(os.environ.get("COSMO_VL_PEER_VENV", Path.home() / ".cache" / "cosmo_vl" / "venvs" / "openflamingo"))

RECIPE = [
    ["install", "torch==2.14.1", "torchvision==0.29.1"],
    ["install", "--no-deps", "open-flamingo==2.0.1"],
    [
        "install", "open_clip_torch", "einops", "einops-exts", "transformers==5.23.0", "pillow", "datasets",
        "accelerate", "peft", "tokenizers", "safetensors", "huggingface_hub", "psutil",
    ],
    ["install", "--no-deps", "-e", str(REPO_ROOT)],
]
CHECK = "import open_flamingo, open_clip, torch, transformers, cosmo_vl, psutil"


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def peer_venv_ready(venv: Path) -> bool:
    python = venv_python(venv)
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", CHECK], capture_output=True).returncode == 0


def ensure_peer_venv(venv: Path = DEFAULT_VENV, log=print) -> Path:
    """Create (first time) or reuse the OpenFlamingo venv; return its python."""
    venv = Path(venv).expanduser()
    if peer_venv_ready(venv):
        log(f"[peer-env] reusing {venv}")
        return venv_python(venv)
    if not venv_python(venv).exists():
        log(f"[peer-env] creating {venv} (python3 -m venv)")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip"]
    for i, step in enumerate(RECIPE, 1):
        log(f"[peer-env] step {i}/{len(RECIPE)}: pip {' '.join(step)}")
        start = time.perf_counter()
        subprocess.run(pip + step + ["-q"], check=True)
        log(f"[peer-env]   done in {time.perf_counter() - start:.0f} s")
    if not peer_venv_ready(venv):
        out = subprocess.run([str(venv_python(venv)), "-c", CHECK], capture_output=True, text=True)
        raise RuntimeError(f"The OpenFlamingo venv at {venv} does not import its packages:\n{out.stderr}")
    log(f"[peer-env] ready: {venv}")
    return venv_python(venv)


def run_worker(python: Path, script: Path, task: dict, timeout: float = 900.0, log=print) -> dict:
    """Run `script --worker TASK_JSON` with `python` in a fresh process and return its JSON result.

    The worker writes its result to a file (stdout stays free for progress and library chatter). A failed
    worker gives {"error": ...} instead of raising, so one broken measurement does not sink a whole run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "result.json"
        cmd = [str(python), str(script), "--worker", json.dumps(task), "--worker-output", str(out_path)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TOKENIZERS_PARALLELISM="false")
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO_ROOT))
        except subprocess.TimeoutExpired:
            return {"error": f"worker timed out after {timeout:.0f} s", "task": task}
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout or "")[-3000:]
            log(f"[worker] FAILED {task.get('name', task)}: {tail.strip().splitlines()[-1] if tail.strip() else ''}")
            return {"error": tail, "task": task}
        result = json.loads(out_path.read_text())
        result.setdefault("worker_wall_s", round(time.perf_counter() - start, 2))
        return result


# ------------------------------------------------------------------------------------------ measurement helpers
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0); False when unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """VmHWM from /proc (resettable), else ru_maxrss (peak over the whole process life)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak resident-set-size growth of this process over a `with` block, in bytes.

    torch's CPU allocator does not go through Python's allocator, so `tracemalloc` sees none of it; the kernel's
    RSS counters see everything (weights, activations, gradients, optimizer states, allocator caches). The peak
    counter is reset at entry (`/proc/self/clear_refs`), so the figure is the high-water mark of the block minus
    the resident size at entry. Without the reset (non-Linux) a 5 ms sampling thread stands in.
    """

    def __enter__(self):
        import gc
        import threading

        gc.collect()
        self.base = rss_bytes()
        self.resettable = reset_peak_rss()
        self._stop = threading.Event()
        self._sampled = self.base
        if not self.resettable:
            def sample():
                while not self._stop.wait(0.005):
                    self._sampled = max(self._sampled, rss_bytes())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.resettable:
            self.peak = peak_rss_bytes()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._sampled, rss_bytes())
        self.delta = max(self.peak - self.base, 0)
        return False


def machine_info() -> dict:
    import platform

    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        import open_flamingo  # noqa: F401
        from importlib.metadata import version

        info["open_flamingo"] = version("open-flamingo")
        info["open_clip_torch"] = version("open_clip_torch")
    except Exception:
        pass
    return info


def peer_cli(description: str, quick_help: str, argv=None):
    """The command line both peer benchmarks share (`--output`, `--quick`, `--venv`, and the hidden `--worker` a
    benchmark re-invokes itself with inside the peer venv). Returns (args, the venv's python); the python is None
    when this process was a worker and has already done its task."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="OpenFlamingo venv (created if absent)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import _workload

        _workload.worker_main(args.worker, args.worker_output)
        return args, None
    if args.output is None:
        parser.error("--output is required")
    return args, ensure_peer_venv(args.venv)


def peer_machine_info(python: Path) -> dict:
    """`machine_info()` as seen from the peer venv's interpreter (its torch / transformers / open-flamingo)."""
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import _peer_env; "
            "print(json.dumps(_peer_env.machine_info()))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def variant_name(task: dict) -> str:
    """A compared model's name, shared by the plans and the workers: `cosmo`, `cosmo/interval2`, `openflamingo`,
    `openflamingo/frozen_embeddings`, `lm_only`."""
    name = task["model"]
    if task["model"] == "cosmo" and task.get("cross_attention_interval", 1) != 1:
        name += f"/interval{task['cross_attention_interval']}"
    return name + ("/frozen_embeddings" if task.get("freeze_lm_embeddings") else "")


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])
