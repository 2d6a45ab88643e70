"""The optional extras keep torch at the pinned CPU build: nnunetv2 pulls timm → torchvision, and an
unpinned torchvision makes pip replace torch 2.13.0 with a newer CUDA build of several GB."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TORCH = "2.13.0"


def extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def test_the_model_extras_pin_every_package_exactly() -> None:
    for name in ("nnunet", "bundle", "onnx"):
        loose = [r for r in extras()[name] if "==" not in r]
        assert loose == [], f"extra {name}: {loose} must be pinned (==) so that no release can move torch"
    assert "torchvision==0.28.0" in extras()["nnunet"]  # the torchvision built for torch 2.13.0


def test_every_installed_package_accepts_the_pinned_torch() -> None:
    torch_version = importlib.metadata.version("torch")
    assert torch_version.split("+")[0] == TORCH
    nvidia = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                    if d.metadata["Name"].lower().startswith("nvidia"))
    assert nvidia == [], f"CUDA packages came in: {nvidia}"
    refusing = []
    for dist in importlib.metadata.distributions():
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.name.lower() == "torch" and (requirement.marker is None or requirement.marker.evaluate()):
                if not requirement.specifier.contains(torch_version.split("+")[0], prereleases=True):
                    refusing.append(f"{dist.metadata['Name']} wants {text}")
    assert refusing == [], refusing


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("extra", ["nnunet", "bundle", "onnx"])
def test_the_extra_installs_without_changing_torch(extra: str) -> None:
    """pip's own resolver against PyPI, as a user elsewhere has it (no host-wide cap on torch here)."""
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable (tests/isolated runs without a network); run it outside")
    report = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                             *extras()[extra]], check=True, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    names = {item["metadata"]["name"].lower() for item in json.loads(report.stdout)["install"]}
    assert "torch" not in names and not {n for n in names if n.startswith("nvidia")}, sorted(names)
