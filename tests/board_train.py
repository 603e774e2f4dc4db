"""Run on a board (and on the host, for comparison): gradients and three SGD steps of an artifact.

Usage: python board_train.py ARTIFACT INPUTS.npz OUTPUT.npz. INPUTS holds x, y and one skeleton index array
per CONV layer (``skeleton/<weight name>``). Imports only numpy and the runtime bundle: a board has nothing else.
"""

import platform
import sys

import numpy as np

from fedskel.runtime import load


def main(artifact, inputs_path, output_path):
    inputs = np.load(inputs_path)
    x, y = inputs["x"], inputs["y"]
    skeleton = {name.removeprefix("skeleton/"): inputs[name] for name in inputs.files if name.startswith("skeleton/")}
    trainer = load(artifact)
    results = {f"full/{n}": g for n, g in trainer.gradients(x, y).items()}
    results.update({f"skeleton/{n}": g for n, g in trainer.gradients(x, y, skeleton=skeleton).items()})
    losses = [trainer.train_step(x, y), trainer.train_step(x, y, skeleton=skeleton), trainer.train_step(x, y, skeleton=skeleton)]
    results.update({f"trained/{n}": p for n, p in trainer.params.items()})
    np.savez(output_path, losses=np.array(losses), machine=np.array(platform.machine()), **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
