"""The distributions carry what an install from them needs: every subpackage in the wheel, and
every C++ header and included fragment in the source distribution (it builds the extension)."""
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_and_wheel_contents(tmp_path):
    env = dict(os.environ, DLLM_MASKS_SKIP_CPP="1")
    env.pop("DLLM_MASKS_REQUIRE_CPP", None)
    cmd = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
           "build", "--build-base", str(tmp_path / "build"),
           "sdist", "-d", str(tmp_path), "bdist_wheel", "-d", str(tmp_path), "--bdist-dir", str(tmp_path / "bd")]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    wheel = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    packages = sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "dllm_masks").rglob("__init__.py"))
    for pkg in packages:
        assert f"{pkg}/__init__.py" in wheel, f"{pkg} is missing from the wheel"
    assert "dllm_masks/triton_kernels/priority_mask.py" in wheel
    sdist = [n.split("/", 1)[1] for n in tarfile.open(next(tmp_path.glob("*.tar.gz"))).getnames() if "/" in n]
    for src in sorted((ROOT / "csrc").iterdir()):
        assert f"csrc/{src.name}" in sdist, f"csrc/{src.name} is missing from the sdist"
    assert "tests/data/priority_mask_vectors.json" in sdist
