"""Models: the description a model comes with, the one runtime interface every kind implements, and one
implementation per kind (ainode's MONAI UNet, MONAI bundles, nnU-Net v2, TorchScript, ONNX), found by
``registry``. The bundled demo model lives in ``demo/``."""
