"""train: make hirviz models: synthetic benchmark, BIOSCAN data, losses, training, evaluation, export.

``train`` imports ``hirviz``; ``hirviz`` never imports ``train``.
"""

from hirviz.torchvision_compat import ensure_torchvision

ensure_torchvision()  # train.data imports torchvision, which needs the shim on a CPU-only torch
