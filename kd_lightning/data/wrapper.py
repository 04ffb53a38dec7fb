"""Wrappers that add to a data set or data module and pass everything else through to it."""
from __future__ import annotations

from typing import Any, Optional

import lightning as L


class Delegating:
    """Attributes this object lacks are read from the wrapped one, named by ``wrapped_attr``."""

    wrapped_attr = "wrapped"

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails; the guards keep unpickling and copying from recursing.
        inner = self.__dict__.get(type(self).wrapped_attr)
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)


class WrappedDataModule(Delegating, L.LightningDataModule):
    """A LightningDataModule around ``datamodule``: every hook and attribute (``num_classes``,
    ``batch_size``...) is the wrapped module's unless a subclass changes it."""

    wrapped_attr = "datamodule"

    def __init__(self, datamodule: L.LightningDataModule):
        super().__init__()
        self.datamodule = datamodule

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        self.datamodule.setup(stage)

    def train_dataloader(self) -> Any:
        return self.datamodule.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.datamodule.predict_dataloader()

    def teardown(self, stage: Optional[str] = None) -> None:
        self.datamodule.teardown(stage)
