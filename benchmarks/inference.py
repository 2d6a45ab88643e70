"""The segment stage of a 300-slice 512x512 CT with the demo model in PyTorch eager, TorchScript, ONNX Runtime and
an int8-quantized ONNX export, in one run: seconds, ratio to eager, peak memory, agreement with eager; and the
int8 model's Dice change against the float model on fresh phantoms and on the real chest CTs of
../shared/data/real-chest-ct. Rows for CUDA (PyTorch, ONNX Runtime's CUDA and TensorRT providers) run where
a GPU is present and say why not otherwise.

Each variant runs in a process of its own (load, then ``runtime.segment`` timed alone), so its peak RSS is its
own. The CT is a phantom (anatomy, so the masks mean something) rendered once into the work folder.

    .venv/bin/python benchmarks/inference.py [--slices 300] [--threads 2] [--work /tmp/ainode-inference]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-chest-ct"


def child(kind: str, path: str, device: str, image_file: str, out: str, threads: int, providers: str) -> None:
    """One variant in this process: load it, segment the CT once, print what was measured."""
    import torch

    torch.set_num_threads(threads)
    from worker.models import registry
    from worker.models.runtime import segment

    started = time.perf_counter()
    options = {"providers": providers.split(",")} if providers else {}
    runtime = registry.load(registry.ModelEntry(kind, kind, Path(path) if path else None, device, options), threads)
    loaded = time.perf_counter() - started
    image = sitk.ReadImage(image_file)
    started = time.perf_counter()
    labels = segment(runtime, image)
    seconds = time.perf_counter() - started
    np.save(out, labels)
    print(json.dumps({"load_s": loaded, "segment_s": seconds, "device": runtime.device,
                      "providers": getattr(runtime, "providers", [])}))


def render_ct(work: Path, slices: int) -> Path:
    from training.phantom import make_case

    case = make_case(3, matrix=512, slice_thickness=1.25, min_slices=slices)
    hu = np.rint(case.hu[:slices]).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(float(v) for v in case.grid.spacing))
    image.SetOrigin(tuple(float(v) for v in case.grid.origin))
    image.SetDirection(tuple(float(v) for v in np.asarray(case.grid.direction).reshape(-1)))
    path = work / "ct.mha"
    sitk.WriteImage(image, str(path))
    return path


def calibration_windows(spec: object, seeds: range) -> list[np.ndarray]:
    """Model-grid windows of training phantoms (never the evaluation ones) for int8 calibration."""
    import torch

    from training.cases import case_images
    from worker.models.grid import to_model_space

    out = []
    for seed in seeds:
        _, image, _ = case_images(seed, 128)
        x, _ = to_model_space(image, spec.preprocess)  # type: ignore[attr-defined]
        t = torch.from_numpy(x)[None, None]
        pad = [max(0, 96 - s) for s in t.shape[2:]]
        t = torch.nn.functional.pad(t, [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
        for z in (0, t.shape[2] - 96):
            for y in (0, t.shape[3] - 96):
                out.append(t[..., z:z + 96, y:y + 96, -96:].contiguous().numpy())
    return out


def models(work: Path) -> dict[str, Path]:
    from worker.models.export import export, quantize_int8
    from worker.models.spec import load_exported_spec, load_spec
    from worker.models.unet import UNetRuntime

    demo = UNetRuntime(load_spec(), device="cpu")
    paths = {kind: export(demo.spec, demo.network, kind, work / kind) for kind in ("torchscript", "onnx")}  # type: ignore
    float_spec = load_exported_spec(paths["onnx"], "onnx")
    paths["onnx-int8"] = quantize_int8(float_spec, calibration_windows(float_spec, range(40, 46)), work / "onnx")
    return paths


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def int8_dice(paths: dict[str, Path], threads: int) -> list[tuple[str, float, float, float]]:
    """(set, Dice float vs truth, Dice int8 vs truth, Dice int8 vs float) for the lungs."""
    from training.cases import case_images
    from worker.models import registry
    from worker.models.postprocess import clean
    from worker.models.runtime import segment

    runtimes = {k: registry.load(registry.ModelEntry(k, "onnx", paths[k], "cpu"), threads)
                for k in ("onnx", "onnx-int8")}
    spec = runtimes["onnx"].spec
    rows: dict[str, list[tuple[float, float, float]]] = {"phantom lung": [], "real lung": []}
    for seed in range(9000, 9005):  # fresh phantoms, as `ainode evaluate` uses
        case, image, _ = case_images(seed, 256)
        voxel_ml = float(np.prod(case.grid.spacing)) / 1000.0
        masks = {k: clean(segment(r, image), spec.labels, voxel_ml) for k, r in runtimes.items()}
        for value, name in ((1, "phantom lung"),):
            truth = case.labels == value
            f, q = masks["onnx"] == value, masks["onnx-int8"] == value
            rows[name].append((dice(f, truth), dice(q, truth), dice(q, f)))
    for path in sorted((REAL / "imagesTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "labelsTr" / path.name))) == 1
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        masks = {k: clean(segment(r, image), spec.labels, voxel_ml) > 0 for k, r in runtimes.items()}
        rows["real lung"].append((dice(masks["onnx"], truth), dice(masks["onnx-int8"], truth),
                                  dice(masks["onnx-int8"], masks["onnx"])))
    return [(name, *np.mean(np.array(v), axis=0)) for name, v in rows.items() if v]  # type: ignore[misc]


def gpu_rows() -> list[tuple[str, str, str, str]]:
    """(name, kind, device, providers) for the GPU variants present here; the others printed as skipped."""
    import onnxruntime
    import torch

    rows, available = [], onnxruntime.get_available_providers()
    if torch.cuda.is_available():
        rows += [("PyTorch eager, CUDA", "ainode", "cuda", ""), ("TorchScript, CUDA", "torchscript", "cuda", "")]
    else:
        print("skipped: PyTorch eager and TorchScript on CUDA (torch.cuda.is_available() is False here)")
    for provider, name in (("CUDAExecutionProvider", "ONNX Runtime, CUDA provider"),
                           ("TensorrtExecutionProvider", "ONNX Runtime, TensorRT provider")):
        if provider in available and torch.cuda.is_available():
            rows.append((name, "onnx", "cuda", provider if provider.startswith("Tensorrt") else ""))
        else:
            print(f"skipped: {name} (ONNX Runtime here has {', '.join(available)}; install onnxruntime-gpu "
                  "on a machine with an NVIDIA GPU)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, device, image_file, out, providers = args.child
        child(kind, path if path != "-" else "", device, image_file, out, args.threads, providers.strip("-"))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="ainode-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ct = render_ct(work, args.slices)
    paths = models(work)
    print(f"CT {sitk.ReadImage(str(ct)).GetSize()} and exports ready in {time.perf_counter() - started:.0f} s "
          f"({work})")
    variants = [("PyTorch eager (ainode)", "ainode", "-", "cpu", ""),
                ("TorchScript", "torchscript", "torchscript", "cpu", ""),
                ("ONNX Runtime", "onnx", "onnx", "cpu", ""), ("ONNX Runtime int8", "onnx", "onnx-int8", "cpu", "")]
    variants += [(name, kind, {"ainode": "-", "torchscript": "torchscript", "onnx": "onnx"}[kind], device, providers)
                 for name, kind, device, providers in gpu_rows()]
    results = []
    for name, kind, key, device, providers in variants:
        out = work / f"labels-{len(results)}.npy"
        path = "-" if key == "-" else str(paths[key])
        wall, peak, stdout = timed([sys.executable, __file__, "--threads", str(args.threads), "--child", kind, path,
                                    device, str(ct), str(out), providers or "-"])
        measured = json.loads(stdout.strip().splitlines()[-1])
        results.append((name, measured, peak, np.load(out)))
        print(f"  {name}: segment {measured['segment_s']:.1f} s, load {measured['load_s']:.1f} s, peak {peak:.0f} MB")
    eager = results[0][3]
    print(f"\nsegment stage, {args.slices}x512x512 phantom CT, demo model, {args.threads} threads, one run each")
    print("| variant | device | segment s | ratio to eager | load s | peak RSS MB | voxels as eager "
          "| Dice lung vs eager |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, measured, peak, labels in results:
        same = float((labels == eager).mean()) * 100
        dices = " / ".join(f"{dice(labels == v, eager == v):.4f}" for v in (1,))
        print(f"| {name} | {measured['device']} | {measured['segment_s']:.1f} | "
              f"{measured['segment_s'] / results[0][1]['segment_s']:.2f} | {measured['load_s']:.1f} | {peak:.0f} | "
              f"{same:.4f} % | {dices} |")
    print("\nint8 against float (ONNX Runtime, after clean-up): mean Dice against the truth, and int8 against float")
    print("| cases | float Dice | int8 Dice | change | int8 vs float Dice |")
    print("| --- | --- | --- | --- | --- |")
    for name, f, q, agreement in int8_dice(paths, args.threads):
        print(f"| {name} | {f:.4f} | {q:.4f} | {q - f:+.4f} | {agreement:.4f} |")


if __name__ == "__main__":
    main()
