"""Labelled data sources shared by the classifier tests."""

import numpy as np
import torch

from lightning_curate.data.source import DataSource, RealData


class SklearnDigits(DataSource):
    """The 1,797 real 8x8 digits from scikit-learn, in [-1, 1], shape [n, 1, 8, 8]; a fixed 80/20 split."""

    class_names = [str(i) for i in range(10)]

    def load(self) -> RealData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images.astype(np.float32))[:, None] / 8.0 - 1.0
        y = torch.from_numpy(bunch.target).long()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        train, held = perm[:1437], perm[1437:]
        return RealData(train=x[train], heldout=x[held], train_labels=y[train], heldout_labels=y[held])


class Unlabelled(DataSource):
    def load(self) -> RealData:
        return RealData(train=torch.zeros(8, 1, 8, 8), heldout=torch.zeros(4, 1, 8, 8))
