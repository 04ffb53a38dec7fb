"""``teacher=<name>`` / ``student=<name>``: one Hydra preset per registered model, made from the registry.

Each architecture is described once, in :mod:`kd_lightning.models.presets`; here every entry becomes the
same config node in the ``teacher`` and ``student`` groups (Hydra's ConfigStore), so
``kd-train teacher=resnet32x4 student=resnet8x4`` and ``student.net.channels=32`` work as with files.
"""
from __future__ import annotations

from typing import Any, Dict

from hydra.core.config_store import ConfigStore

from ..models import list_models, model_entry

ROLES = ("teacher", "student")


def preset_node(name: str) -> Dict[str, Any]:
    """The config node of model ``name``: ``net`` (what ``instantiate`` builds), ``taps``, ``ckpt_path``."""
    entry = model_entry(name)
    node: Dict[str, Any] = {}
    net: Dict[str, Any] = {"_target_": "kd_lightning.models.create_model", "model_name": name}
    for key in entry.data_args:  # num_classes, or a language model's vocab_size: the data decides
        net[key] = f"${{data.{key}}}"
    for key, value in entry.arguments().items():
        if key in entry.top_level:  # teacher.name=resnet34 rather than teacher.net.name=...
            node[key] = value
            net[key] = f"${{..{key}}}"
        else:
            net[key] = value
    node.update(net=net, taps=dict(entry.taps), ckpt_path=None)
    return node


def register_model_presets() -> None:
    store = ConfigStore.instance()
    for name in list_models():
        node = preset_node(name)
        for role in ROLES:
            store.store(group=role, name=name, node=node)
