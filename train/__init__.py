"""train: make hirviz models: synthetic benchmark, BIOSCAN data, losses, training, evaluation, export.

``train`` imports ``hirviz``; ``hirviz`` never imports ``train``.
"""

import hirviz  # noqa: F401  (installs the torchvision import shim before anything else loads torchvision)
