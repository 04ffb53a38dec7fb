"""Distillation losses: ``nn.Module`` wrappers over :mod:`kd_lightning.losses.functional`.

Every loss takes one inputs object per step (:class:`DistillInputs` for classifier losses,
:class:`TokenInputs` for token losses) and returns ``{"loss": total, term: value, ...}``.
To write a method, subclass :class:`Loss` (logits), :class:`FeatureLoss` (features read by module
path) or :class:`AdapterLoss` (features through trainable adapters built from the observed shapes).
"""
from .base import CLASSIFIER, TOKEN, CompositeLoss, Compose, DistillInputs, Loss, TokenInputs
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
    "Loss", "FeatureLoss", "AdapterLoss", "CompositeLoss", "Compose", "Staged", "DistillInputs", "TokenInputs", "CLASSIFIER", "TOKEN",
    "CE", "KD", "DKD", "DIST", "LogitMSE",
    "FitNet", "AT", "SP", "RKD", "PKT", "CC", "NST", "VID", "OFD", "CRD", "HiddenStates", "AttentionMaps",
    "TokenKD",
    "DISTPlus", "SRD", "SKD", "KDSVD", "CTKD",
]

# ReviewKD, FT, AB, FSP and ICKD.
from .reviewkd import ReviewKD
from .ft import FT
from .ab import AB
from .fsp import FSP
from .ickd import ICKD

__all__ += ["ReviewKD", "FT", "AB", "FSP", "ICKD"]

# Teachers with another tokenizer than the student's.
from .xtok import CrossTokenInputs, CrossTokenizerLoss
from .uld import ULD
from .span_align import SpanAlign

__all__ += ["CrossTokenInputs", "CrossTokenizerLoss", "ULD", "SpanAlign"]
