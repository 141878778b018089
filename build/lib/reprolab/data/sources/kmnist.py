"""Kuzushiji-MNIST: cursive Japanese characters, 60k train + 10k test, 28x28 grey.

Parsed by torchvision.datasets.KMNIST; a mirror may hold the files flat, under kmnist/, or in
torchvision's own layout (KMNIST/raw/).
"""

from torchvision.datasets import KMNIST

from reprolab.data.sources._torchvision import idx_source

MIRROR_LAYOUT = ["KMNIST/raw"]
FILES, locate, load = idx_source(KMNIST, "kmnist")
