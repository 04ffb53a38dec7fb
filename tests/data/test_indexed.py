"""kd_lightning/data/indexed.py: IndexedDataset adds the sample index to tuple and dict items."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning.data.indexed import IndexedDataset


def test_indexed_dataset_wraps_tuples_and_dicts():
    base = TensorDataset(torch.arange(5.0)[:, None], torch.arange(5))
    ds = IndexedDataset(base)
    x, y, i = ds[3]
    assert len(ds) == 5 and i == 3 and int(y) == 3
    assert ds.tensors is base.tensors  # attributes pass through

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"input": torch.zeros(1), "label": i}

    assert IndexedDataset(Dicts())[1]["index"] == 1
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch[2].tolist() == [0, 1, 2, 3, 4]
