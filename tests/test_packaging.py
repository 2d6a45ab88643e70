"""What `pip install .` puts on a machine (the Docker image installs ainode that way, not editable): the
wheel carries the migrations and the demo model, and from it alone a database is migrated and the demo
model loads and segments."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

CHECK = """
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, sys.argv[1])
import db
import worker
from ainode.config import load_settings
from db.engine import Database
from worker.models.spec import load_spec
from worker.models.runtime import segment
from worker.models.unet import UNetRuntime
for package in (db, worker):
    assert Path(package.__file__).is_relative_to(Path(sys.argv[1])), package.__file__
settings = load_settings(None)
database = Database(f"sqlite:///{sys.argv[1]}/ainode.db")
database.migrate()
spec = load_spec()
image = sitk.GetImageFromArray(np.full((24, 48, 48), -800, dtype=np.int16))
image.SetSpacing((4.0, 4.0, 8.0))
labels = segment(UNetRuntime(spec, device="cpu"), image)
print(spec.name, labels.shape)
"""


def test_the_wheel_installs_a_working_node(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "wheel"), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("ainode-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("worker/models/demo/model.toml", "worker/models/demo/weights.pt", "db/migrations/env.py",
                   "db/migrations/versions/0001_initial_schema.py", "db/migrations/script.py.mako"):
        assert needed in names, f"{needed} is not in {wheel.name}"
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    # the installed copy first on the path, not the source tree (the dependencies come from this environment)
    (tmp_path / "check.py").write_text(CHECK)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AINODE_") and k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(target)], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(24, 48, 48)" in result.stdout
