"""TorchScript and ONNX (kinds torchscript and onnx): ``ainode export`` writes the demo model in both forms with
its description, and both run with logits within 1e-4 of PyTorch and the same masks on phantoms; a model
that returns NaN, the wrong shape or runs out of memory fails its job with that reason, other models' go on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sqlalchemy import select

from ainode.config import load_settings
from conftest import PhantomSeries
from db import queue
from db.engine import Database
from db.errors import ConfigurationError
from db.models import Job
from db.routing import Routing
from test_worker import store
from training.cases import case_images
from worker.models import registry
from worker.models.export import example_window, export
from worker.models.grid import to_model_space
from worker.models.runtime import ModelFailure, ModelOutput, segment
from worker.models.spec import load_spec
from worker.models.unet import UNetRuntime
from worker.pipeline import Pipeline, PipelineConfig
from worker.runner import RunnerConfig, Worker

onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install '.[onnx]')")
CUDA = torch.cuda.is_available()
ORT_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.fixture(scope="module")
def demo() -> UNetRuntime:
    return UNetRuntime(load_spec(), device="cpu")


@pytest.fixture(scope="module")
def exported(demo: UNetRuntime, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {kind: export(demo.spec, demo.network, kind, root / kind) for kind in ("torchscript", "onnx")}  # type: ignore


def windows(demo: UNetRuntime) -> list[torch.Tensor]:
    """Real model input: windows of two phantoms on the model's grid, plus a smooth synthetic one."""
    out = [example_window(demo.spec, seed=1)]
    for seed in (5, 6):
        _, image, _ = case_images(seed, 128)
        x, _ = to_model_space(image, demo.spec.preprocess)
        t = torch.from_numpy(x)[None, None][..., :96, :96, :96]
        pad = [96 - s for s in t.shape[2:]]
        out.append(torch.nn.functional.pad(t, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate").contiguous())
    return out


def logits(runtime: object, window: torch.Tensor) -> np.ndarray:
    if hasattr(runtime, "session"):
        return runtime.run(window.numpy())  # type: ignore[attr-defined]
    with torch.inference_mode():
        return runtime.network(window.to(runtime.device)).cpu().numpy()  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_the_export_runs_with_pytorchs_logits_and_masks(demo: UNetRuntime, exported: dict[str, Path],
                                                         kind: str) -> None:
    runtime = registry.load(registry.ModelEntry("x", kind, exported[kind], "cpu"))
    assert runtime.spec.name == demo.spec.name and runtime.spec.labels == demo.spec.labels
    assert runtime.spec.exported_from["weights_sha256"] == demo.spec.weights_digest()  # type: ignore[attr-defined]
    worst = max(float(np.abs(logits(runtime, w) - logits(demo, w)).max()) for w in windows(demo))
    assert worst <= 1e-4, f"{kind}: max |logit difference| {worst:.2e}"
    for seed in (7, 8):
        _, image, _ = case_images(seed, 128)
        ours, theirs = segment(runtime, image), segment(demo, image)
        assert len(np.unique(theirs)) == len(demo.spec.labels) + 1 and int((ours != theirs).sum()) == 0


def test_ainode_export_writes_the_model_and_its_description(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ainode.cli", "export", "--model", "demo", "--format", "torchscript",
                           "--out", str(tmp_path / "ts")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == ["model.toml", "model.ts"]
    config = tmp_path / "ainode.toml"
    config.write_text(f'[models.ts]\nkind = "torchscript"\npath = "{tmp_path / "ts" / "model.toml"}"\n')
    listed = subprocess.run([sys.executable, "-m", "ainode.cli", "models", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "torchscript" in listed.stdout, listed.stdout + listed.stderr
    refused = subprocess.run([sys.executable, "-m", "ainode.cli", "export", "--model", "nope", "--format", "onnx"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "'nope' must name a configured model of kind ainode" in refused.stderr


def test_a_description_of_another_kind_or_misfitting_network_is_refused(exported: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="model x: .*describes a onnx model, not torchscript"):
        registry.describe(registry.ModelEntry("x", "torchscript", exported["onnx"], "cpu"))
    folder = shutil.copytree(exported["torchscript"].parent, tmp_path / "wide")
    torch.jit.script(torch.nn.Conv3d(1, 5, 1)).save(str(folder / "model.ts"))
    with pytest.raises(ConfigurationError, match=r"model x: .*gives outputs of shape \(1, 5, 32, 32, 32\)"):
        registry.load(registry.ModelEntry("x", "torchscript", folder / "model.toml", "cpu"))


class Broken(torch.nn.Module):
    """A network that answers with the right shape and NaN, or with half the spatial size."""

    def __init__(self, nan: bool, classes: int) -> None:
        super().__init__()
        self.nan = nan
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nan:
            return torch.full((x.shape[0], self.classes, x.shape[2], x.shape[3], x.shape[4]), float("nan"))
        return torch.zeros((x.shape[0], self.classes, x.shape[2] // 2, x.shape[3] // 2, x.shape[4] // 2))


def broken_model(exported: dict[str, Path], folder: Path, nan: bool) -> Path:
    shutil.copytree(exported["torchscript"].parent, folder)
    torch.jit.script(Broken(nan, len(load_spec().labels) + 1)).save(str(folder / "model.ts"))
    return folder / "model.toml"


def test_nan_and_wrongly_shaped_outputs_fail_with_the_reason(exported: dict[str, Path], tmp_path: Path) -> None:
    _, image, _ = case_images(5, 64)
    nan = registry.load(registry.ModelEntry("nan", "torchscript", broken_model(exported, tmp_path / "n", True), "cpu"))
    with pytest.raises(ModelFailure, match="returned NaN or infinite probabilities"):
        segment(nan, image)
    half = registry.load(registry.ModelEntry("h", "torchscript", broken_model(exported, tmp_path / "h", False), "cpu"))
    with pytest.raises(ModelFailure, match=r"returned probabilities of shape \(2, .*\); expected \(2, "):
        segment(half, image)


class OutOfMemory:
    """A runtime whose device runs out of memory, as PyTorch reports it on a GPU."""

    def __init__(self, spec: object) -> None:
        self.spec, self.device = spec, "cuda:0"

    def infer(self, image: sitk.Image) -> ModelOutput:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")


def test_running_out_of_memory_fails_with_the_reason(demo: UNetRuntime) -> None:
    with pytest.raises(ModelFailure, match="ran out of memory on cuda:0: CUDA out of memory. Tried to allocate"):
        segment(OutOfMemory(demo.spec), sitk.Image(8, 8, 8, sitk.sitkInt16))  # type: ignore[arg-type]


def test_a_failing_model_fails_its_own_job_and_the_other_models_job_succeeds(
        tmp_path: Path, database: Database, small_series: PhantomSeries, demo: UNetRuntime,
        exported: dict[str, Path]) -> None:
    policy = queue.QueuePolicy(settle_seconds=0, max_attempts=2, backoff_seconds=0)
    store(database, tmp_path, small_series.paths, lambda series: Routing.to("demo", "broken"), policy)
    broken = registry.load(registry.ModelEntry("broken", "torchscript", broken_model(exported, tmp_path / "b", True),
                                               "cpu"))
    pipelines = {"demo": Pipeline(demo, PipelineConfig(tmp_path)), "broken": Pipeline(broken, PipelineConfig(tmp_path))}
    worker = Worker(database, policy, pipelines, RunnerConfig(("pacs",)), name="test-worker")
    while worker.run_one():
        pass
    with database.read() as session:
        jobs = {j.model: (j.state, j.attempts, j.error) for j in session.scalars(select(Job))}
    assert jobs["demo"] == ("succeeded", 1, None)
    state, attempts, error = jobs["broken"]
    assert (state, attempts) == ("failed", 2) and "returned NaN or infinite probabilities" in error


def test_kind_options_are_checked_against_the_kind(tmp_path: Path) -> None:
    config = tmp_path / "ainode.toml"
    config.write_text('[models.b]\nkind = "monai-bundle"\npath = "/x"\nfolds = [0]\n')
    with pytest.raises(ConfigurationError, match="models.b: folds: an option of nnunet-v2 models, not of monai-bundle"):
        load_settings(config)
    config.write_text('[models.n]\nkind = "nnunet-v2"\npath = "/x"\nfolds = [0, 1]\nmirroring = false\n'
                      'orientation = "RAS"\n[models.b]\nkind = "monai-bundle"\npath = "/y"\n'
                      'overrides = { "displayable_configs#highres" = false }\n')
    entries = {e.name: e for e in load_settings(config).model_entries()}
    assert entries["n"].options == {"folds": [0, 1], "mirroring": False, "orientation": "RAS"}
    assert entries["b"].options == {"overrides": {"displayable_configs#highres": False}}
    config.write_text('[models.n]\nkind = "nnunet-v2"\npath = "/x"\ntile_step_size = 1.5\n')
    with pytest.raises(ConfigurationError, match="models.n.tile_step_size"):
        load_settings(config)


def test_cuda_asked_for_where_onnx_runtime_has_none_is_refused(exported: dict[str, Path]) -> None:
    if ORT_CUDA:
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(ConfigurationError, match="model x: ONNX Runtime here has no CUDAExecutionProvider"):
        registry.load(registry.ModelEntry("x", "onnx", exported["onnx"], "cuda"))


@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("kind", ["ainode", "torchscript"])
def test_pytorch_kinds_run_on_cuda_with_the_cpus_masks(demo: UNetRuntime, exported: dict[str, Path], kind: str) -> None:
    path = None if kind == "ainode" else exported[kind]
    runtime = registry.load(registry.ModelEntry("gpu", kind, path, "cuda"))
    assert runtime.device == "cuda"
    _, image, _ = case_images(7, 128)
    assert (segment(runtime, image) != segment(demo, image)).mean() < 1e-4


@pytest.mark.skipif(not ORT_CUDA, reason="ONNX Runtime here has no CUDA execution provider")
def test_onnx_runs_on_cudas_execution_provider(demo: UNetRuntime, exported: dict[str, Path]) -> None:
    runtime = registry.load(registry.ModelEntry("gpu", "onnx", exported["onnx"], "cuda"))
    assert runtime.device == "cuda" and runtime.providers[0] == "CUDAExecutionProvider"  # type: ignore[attr-defined]
    _, image, _ = case_images(7, 128)
    assert (segment(runtime, image) != segment(demo, image)).mean() < 1e-4
