"""Models: the description a model comes with, the one runtime interface every kind implements, and the
implementations (today's MONAI UNet). The bundled demo model lives in ``demo/``."""
