"""The `mathgrpo` command itself: version, help."""

import subprocess
import sys
from pathlib import Path

import mathgrpo


def test_version():
    env_path = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-m", "mathgrpo", "--version"], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == f"mathgrpo {mathgrpo.__version__}"
