"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018): a paraphraser trained first, then a translator."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import _BN, _CONV, AdapterLoss, Shape, paired_dims
from .functional.hint import ft_loss
from .staged import Staged


def _conv_stack(widths: Sequence[int], nd: int, batch_norm: bool) -> nn.Sequential:
    """3×3 convolutions (same padding) through ``widths``, each followed by (BN and) LeakyReLU(0.1), the
    paper's paraphraser and translator blocks; linear layers for vectors."""
    layers: List[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers.append(_CONV[nd](c_in, c_out, 3, padding=1) if nd else nn.Linear(c_in, c_out))
        if batch_norm:
            layers.append(_BN[max(nd, 1)](c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def factor_width(teacher_channels: int, rate: float) -> int:
    """The factor's channels: the paraphrase rate ``k`` times the teacher's width (at least 1)."""
    return max(1, int(teacher_channels * rate))


class Paraphraser(nn.Module):
    """An autoencoder of the teacher's feature; its encoder's output is the teacher factor."""

    def __init__(self, channels: int, rate: float, nd: int):
        super().__init__()
        k = factor_width(channels, rate)
        # No BatchNorm, as in the authors' CIFAR code: the encoder then behaves the same while it trains
        # (first stage) and when it only reads (second stage).
        self.encoder = _conv_stack([channels, channels, k, k], nd, batch_norm=False)
        self.decoder = _conv_stack([k, k, channels, channels], nd, batch_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class FTParaphrase(AdapterLoss):
    """FT's first stage: each pair's paraphraser learns to reconstruct the teacher's feature,
    ``{"loss": ft_reconstruction, "ft_reconstruction": Σ_pairs MSE(P(f_t), f_t)}``. The student feature is
    read for its rank only (the translator of the second stage is built for it)."""

    needs_target = False

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, rate: float = 0.5):
        super().__init__(pairs, student_layers, teacher_layers, 1.0)
        if not 0 < rate <= 1:
            raise ValueError(f"FT paraphrase rate must be in (0, 1] (the paper uses 0.5), got {rate!r}")
        self.rate = float(rate)

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        return Paraphraser(teacher_shape[0], self.rate, paired_dims(student_shape, teacher_shape, "FT"))

    def teacher_inputs(self, inputs: DistillInputs) -> List[Tensor]:
        out = []
        for _, t in self.pairs:
            if t not in inputs.teacher_features:
                raise KeyError(f"FT: no teacher feature {t!r} was captured "
                               f"(captured: {sorted(inputs.teacher_features)})")
            out.append(inputs.teacher_features[t].float().detach())
        return out

    @torch.no_grad()
    def factors(self, inputs: DistillInputs) -> List[Tensor]:
        """The teacher factors (encoder outputs) of every pair, without gradient: after the first stage the
        paraphraser is fixed."""
        self._require_built()
        return [p.encoder(t) for p, t in zip(self.adapters, self.teacher_inputs(inputs))]

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        rec = sum(F.mse_loss(p(t), t) for p, t in zip(self.adapters, self.teacher_inputs(inputs)))
        return {"loss": rec, "ft_reconstruction": rec}


class FTTranslate(AdapterLoss):
    """FT's second stage: ``{"loss": weight · ft, "ft": Σ_pairs ft_loss(translator(f_s), teacher factor)}``.

    The teacher factors come from ``paraphrase`` (held by reference: :class:`FT` owns both stages)."""

    needs_target = False

    def __init__(self, paraphrase: FTParaphrase, weight: float = 200.0, p: float = 1.0, mode: str = "code"):
        super().__init__(paraphrase.pairs, weight=weight)
        if mode not in ("code", "paper"):
            raise ValueError(f"FT mode must be 'code' (the authors' code) or 'paper', got {mode!r}")
        if p <= 0:
            raise ValueError(f"FT p must be positive (the paper uses 1), got {p!r}")
        self.paraphrase = (paraphrase,)  # a reference, not a submodule: its weights belong to the first stage
        self.p, self.mode = float(p), mode

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        nd = paired_dims(student_shape, teacher_shape, "FT")
        k = factor_width(teacher_shape[0], self.paraphrase[0].rate)
        return _conv_stack([student_shape[0], student_shape[0], k, k], nd, batch_norm=True)

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        factors = self.paraphrase[0].factors(inputs)
        ft = sum(ft_loss(translator(s.float()), f, self.p, self.mode)
                 for translator, (s, _), f in zip(self.adapters, self.features(inputs), factors))
        return {"loss": self.weight * ft, "ft": ft}


class FT(Staged):
    """Factor transfer in its two stages.

    Epochs ``<= paraphraser_epochs`` train a paraphraser per pair (a convolutional autoencoder of the
    teacher's feature, factor width ``rate`` × the teacher's) to reconstruct it; later epochs fix the
    paraphraser and train the student through a translator (three 3×3 conv + BN + LeakyReLU blocks) so that
    its factor matches the teacher's, ``weight · ft_loss(translator(f_s), encoder(f_t), p, mode)``
    (:func:`~kd_lightning.losses.functional.ft_loss`). Defaults: rate 0.5, p 1, weight 200 (RepDistiller's
    CIFAR β with the authors' element-mean form), 30 paraphraser epochs (RepDistiller's; ``distill=ft`` sets 5
    and taps the deepest stage). Compose with KD or CE for the label term: it then trains the student during
    the paraphraser's epochs too, where the paper leaves it idle.
    """

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 200.0,
                 rate: float = 0.5, p: float = 1.0, mode: str = "code", paraphraser_epochs: int = 30):
        paraphrase = FTParaphrase(pairs, student_layers, teacher_layers, rate)
        super().__init__(paraphrase, FTTranslate(paraphrase, weight, p, mode), switch_epoch=paraphraser_epochs)

    @property
    def weight(self) -> float:
        return self.then.weight
