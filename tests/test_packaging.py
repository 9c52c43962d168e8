"""The four library folders install only under the `cosmo_vl` namespace."""

import subprocess
import sys


def test_no_top_level_library_modules(tmp_path):
    code = (
        "import importlib.util, cosmo_vl, cosmo_vl.modeling, cosmo_vl.processing, cosmo_vl.trainers, cosmo_vl.hub_cards;"
        "print([n for n in ('modeling', 'processing', 'trainers', 'hub_cards') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
