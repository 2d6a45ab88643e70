"""``ainode demo`` — the README's first command — runs the whole loop and reports what came back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_the_demo_returns_seg_and_sr_with_dice_and_an_overlay(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ainode.cli", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    sent = re.search(r"sent (\d+) instances", output)
    assert sent and int(sent.group(1)) >= 100
    assert "succeeded" in output
    dice = dict(re.findall(r"(Lung) (\d\.\d+)", output.split("Dice of the returned SEG")[1]))
    assert float(dice["Lung"]) >= 0.90, output
    overlay = Image.open(tmp_path / "overlay.png")
    assert overlay.size == (1024, 512)
    assert len(list((tmp_path / "pacs").glob("*.dcm"))) == 2
    finished = float(re.search(r"demo finished in (\d+\.\d) s", output).group(1))
    print(f"demo finished in {finished} s")
