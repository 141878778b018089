"""Two training steps of every classifier and regressor architecture of params.yaml, as the
pipeline computes them (portable numerics, its model builder, loss and fused optimizer), on
fixed synthetic batches; prints one JSON line {model: md5 of the weights}. Run natively and
under QEMU by tests/test_cpus.py: every model family's kernels in a few seconds of emulation
(the GAN's are covered by the emulated pipeline stages). Usage: python emulated_probe.py
PARAMS_YAML"""

from __future__ import annotations

import hashlib
import json
import sys

from reprolab.core.params import load_params
from reprolab.core.stage import set_numerics


def main(params_file: str) -> None:
    params = load_params(params_file, before_modules=set_numerics)  # as a stage does
    import torch

    from reprolab.learn.engine import make_optimizer
    from reprolab.learn.objectives import OBJECTIVES
    from reprolab.models._base import ModelSpec, build_model

    torch.set_num_threads(params.threads)
    hashes = {}
    for group, task, shape in (
        ("classifiers", "classification", (1, 8, 8)),
        ("regressors", "regression", (10,)),
    ):
        for name, spec in getattr(params, group).items():
            torch.manual_seed(params.seed)
            n_outputs = 10 if task == "classification" else 1
            model = build_model(
                ModelSpec(
                    arch=spec.arch,
                    options=dict(spec.options),
                    input_shape=shape,
                    n_outputs=n_outputs,
                    mean=[0.5] * shape[0],
                    std=[2.0] * shape[0],
                    target_scale=None if task == "classification" else (4.9, 0.55),
                )
            )
            optimizer = make_optimizer(model, spec, lr=1e-3, weight_decay=1e-4)
            gen = torch.Generator().manual_seed(7)
            for _ in range(2):
                x = torch.rand((32, *shape), generator=gen) * 16
                if task == "classification":
                    y = torch.randint(0, 10, (32,), generator=gen)
                else:
                    y = torch.rand(32, generator=gen) * 300
                optimizer.zero_grad()
                OBJECTIVES[task].loss(model(x), y).backward()
                optimizer.step()
            md5 = hashlib.md5()
            for key, value in sorted(model.state_dict().items()):
                md5.update(key.encode() + value.detach().contiguous().numpy().tobytes())
            hashes[name] = md5.hexdigest()
    print(json.dumps(hashes))


if __name__ == "__main__":
    main(sys.argv[1])
