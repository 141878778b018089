"""MNIST: handwritten digits, 60k train + 10k test, 28x28 grey.

Parsed by torchvision.datasets.MNIST; a mirror may hold the files flat, under mnist/, or in
torchvision's own layout (MNIST/raw/).
"""

from torchvision.datasets import MNIST

from reprolab.data.sources._torchvision import idx_source

MIRROR_LAYOUT = ["MNIST/raw"]
FILES, locate, load = idx_source(MNIST, "mnist")
