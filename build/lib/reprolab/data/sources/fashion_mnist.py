"""Fashion-MNIST: Zalando article images, 60k train + 10k test, 28x28 grey.

Parsed by torchvision.datasets.FashionMNIST; a mirror may hold the files flat, under
fashion_mnist/, or in torchvision's own layout (FashionMNIST/raw/).
"""

from torchvision.datasets import FashionMNIST

from reprolab.data.sources._torchvision import idx_source

MIRROR_LAYOUT = ["FashionMNIST/raw"]
FILES, locate, load = idx_source(FashionMNIST, "fashion_mnist")
