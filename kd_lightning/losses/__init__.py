"""Distillation objectives: ``nn.Module`` wrappers over :mod:`kd_lightning.losses.functional`."""
from .base import Compose, DistillInputs, Objective, resolve_pairs
from .ce import CE
from .kd import KD
from .dkd import DKD
from .dist import DIST
from .mse import LogitMSE
from .staged import Staged
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
from .token import TokenKD
