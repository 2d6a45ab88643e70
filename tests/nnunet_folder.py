"""A small nnU-Net v2 trained-model folder made locally, for tests: nothing is downloaded.

The folder has the layout nnU-Net's ``nnUNetPredictor.initialize_from_trained_model_folder`` loads
(``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth``) with a 3d_fullres configuration small
enough to run on a CPU in seconds. The plans are written here, not planned, so they stay small and fixed;
``train_nnunet.py`` runs nnU-Net's own preprocessing and trainer on the same plans to show they are whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LABELS = {"background": 0, "lung": 1, "lesion": 2}
CHANNELS = {"0": "CT"}
# CT normalisation (clip to the foreground's 0.5/99.5 percentiles, then z-score) needs these; values
# are what nnU-Net's fingerprint finds on the phantoms' lungs and lesions, rounded.
CT_FOREGROUND = {"mean": -780.0, "std": 180.0, "percentile_00_5": -1000.0, "percentile_99_5": 60.0,
                 "min": -1100.0, "max": 150.0, "median": -840.0}


def dataset_json(labels: dict[str, int] | None = None, channels: dict[str, str] | None = None,
                 num_training: int = 1) -> dict[str, Any]:
    return {"channel_names": channels or CHANNELS, "labels": labels or LABELS,
            "numTraining": num_training, "file_ending": ".nii.gz"}


def small_plans(dataset_name: str = "Dataset901_Phantom", spacing: tuple[float, float, float] = (2.5, 2.5, 2.5),
                patch_size: tuple[int, int, int] = (64, 64, 64), features: tuple[int, ...] = (8, 16, 32, 64),
                reader_writer: str = "SimpleITKIO", n_channels: int = 1) -> dict[str, Any]:
    """Plans with one 3d_fullres configuration: a PlainConvUNet with ``len(features)`` stages.

    Spacing and patch size are in nnU-Net's axis order (z, y, x), as in any plans.json.
    """
    n_stages = len(features)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": [100, 140, 140],
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"] * n_channels,
        "use_mask_for_norm": [False] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n_stages,
                "strides": strides,
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [100, 140, 140],
        "image_reader_writer": reader_writer,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): dict(CT_FOREGROUND) for c in range(n_channels)},
    }


def build_network(plans: dict[str, Any], dataset: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The network nnU-Net's default trainer builds from these plans, initialised as nnU-Net does."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(seed)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  len(dataset["channel_names"]), len(dataset["labels"]), allow_init=True,
                                  deep_supervision=False)


def write_model_folder(dest: Path, plans: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
                       state_dict: dict[str, torch.Tensor] | None = None, trainer_name: str = "nnUNetTrainer",
                       fold: int = 0, seed: int = 0,
                       mirroring_axes: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """Write ``dest/{dataset.json, plans.json, fold_<fold>/checkpoint_final.pth}`` and return ``dest``.

    Without ``state_dict`` the weights are nnU-Net's initialisation from ``seed``: enough for parity tests,
    which compare two ways of running the same weights, not how good the weights are.
    """
    plans = plans or small_plans()
    dataset = dataset or dataset_json()
    if state_dict is None:
        state_dict = build_network(plans, dataset, seed).state_dict()
    (dest / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (dest / "plans.json").write_text(json.dumps(plans, indent=2))
    (dest / "dataset.json").write_text(json.dumps(dataset, indent=2))
    checkpoint = {  # the keys nnUNetTrainer.save_checkpoint writes; the predictor reads the first four
        "network_weights": state_dict,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset},
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": mirroring_axes,
        "current_epoch": 0,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
    }
    torch.save(checkpoint, dest / f"fold_{fold}" / "checkpoint_final.pth")
    return dest
