"""benchmarks/gpu.sh on a GPU machine without a package registry: it installs nothing from one,
installs each carried wheel its interpreter lacks (and only those), and gpu_wheels.sh fetches
versions that pyproject.toml admits. (tests/test_benchmarks.py runs gpu.sh's commands.)"""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_SH = (REPO / "benchmarks" / "gpu.sh").read_text()
WHEELS_SH = (REPO / "benchmarks" / "gpu_wheels.sh").read_text()


def test_gpu_script_uses_no_registry():
    for line in GPU_SH.splitlines():
        if "pip" in line and "install" in line:
            assert "--no-index" in line, line
    assert "pip download" not in GPU_SH and 'pip", "download' not in GPU_SH
    assert "PY=${PYTHON:-$DEFAULT_PY}" in GPU_SH and "DEFAULT_PY=python3" in GPU_SH
    ignored = (REPO / ".gitignore").read_text().split()  # carried or made there, never committed
    assert "/gpu_wheels/" in ignored and ".cache/" in ignored


def _wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


# An interpreter without pip: the installer unzips the wheels instead.
NO_PIP = "import importlib.util as u\n_find = u.find_spec\nu.find_spec = lambda n, *a: None if n == 'pip' else _find(n, *a)\n"


@pytest.mark.parametrize("prelude", ["", NO_PIP], ids=["pip", "no_pip"])
def test_installer_takes_only_the_missing_wheels(tmp_path, prelude):
    """The installer gpu.sh runs when an import is missing: a carried wheel whose distribution the
    interpreter lacks is installed into the private folder, one it has (pytest here) is not."""
    m = re.search(r"<<'EOF'\n(import importlib\.metadata.*?)\nEOF\n", GPU_SH, re.S)
    assert m and "zipfile" in m.group(1), "the installer's heredoc in gpu.sh"
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "camjax_offline_probe", "1.0", "camjax_offline_probe")
    _wheel(wheels, "pytest", "0.0.1", "pytest_impostor")
    proc = subprocess.run(
        [sys.executable, "-", str(wheels), str(site)],
        input=prelude + m.group(1),
        text=True,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "missing: camjax_offline_probe-1.0-py3-none-any.whl\n" in proc.stdout
    assert (site / "camjax_offline_probe.py").exists()
    assert not (site / "pytest_impostor.py").exists()
    # pip records itself as the installer; the unzipping fallback leaves the wheel's files as they are
    assert (site / "camjax_offline_probe-1.0.dist-info" / "INSTALLER").exists() == (prelude == "")
    probe = subprocess.run(
        [sys.executable, "-c", "import camjax_offline_probe as p; print(p.VALUE)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.stdout.strip() == "42", probe.stderr


def test_carried_wheels_lie_in_the_pinned_ranges():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    block = re.search(r"WHEELS=\((.*?)\)", WHEELS_SH, re.S).group(1)
    pins = dict(spec.split("==") for spec in block.split())
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {canonicalize_name(r.name): r.specifier for r in map(Requirement, deps)}
    for name in ("grain", "array-record", "ml-collections", "simplejpeg", "tensorboardX", "PyWavelets"):
        assert ranges[canonicalize_name(name)].contains(pins[name]), (name, pins[name])
    assert set(pins) >= {"grain", "array-record", "portpicker", "ml-collections", "simplejpeg", "tensorboardX"}
