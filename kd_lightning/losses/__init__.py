"""Distillation losses: ``nn.Module`` wrappers over :mod:`kd_lightning.losses.functional`.

Every loss takes one :class:`DistillInputs` per step and returns ``{"loss": total, term: value, ...}``.
To write a method, subclass :class:`Loss` (logits), :class:`FeatureLoss` (features read by module
path) or :class:`AdapterLoss` (features through trainable adapters built from the observed shapes).
"""
from .base import CompositeLoss, Compose, DistillInputs, Loss
from .feature_base import AdapterLoss, FeatureLoss
from .staged import Staged
from .ce import CE
from .kd import KD
from .dkd import DKD
from .dist import DIST
from .mse import LogitMSE
from .fitnet import FitNet
from .at import AT
from .sp import SP
from .rkd import RKD
from .pkt import PKT
from .cc import CC
from .nst import NST
from .vid import VID
from .ofd import OFD
from .crd import CRD
from .hidden import AttentionMaps, HiddenStates
from .token import TokenKD
from .dist_plus import DISTPlus
from .srd import SRD
from .skd import SKD
from .kdsvd import KDSVD
from .ctkd import CTKD

__all__ = [
    "Loss", "FeatureLoss", "AdapterLoss", "CompositeLoss", "Compose", "Staged", "DistillInputs",
    "CE", "KD", "DKD", "DIST", "LogitMSE",
    "FitNet", "AT", "SP", "RKD", "PKT", "CC", "NST", "VID", "OFD", "CRD", "HiddenStates", "AttentionMaps",
    "TokenKD",
    "DISTPlus", "SRD", "SKD", "KDSVD", "CTKD",
]
