"""CausalLMDistillationModule: distill a frozen causal language model into a smaller one, token by token."""
from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric

from ..base import TeacherStudentModule
from ..forward import call_signature, final_hidden, fused_head_problem, lm_logits
from ..losses.base import TOKEN, CompositeLoss, Loss, TokenInputs
from ..losses.token import IGNORE_INDEX, TokenKD
from ..losses.xtok import CrossTokenInputs, CrossTokenizerLoss
from ..signal import TeacherOutput, teacher_signal
from ..teacher import build_teacher
from ..guards import attention_mask_of
from .generation import OnPolicy, on_policy_batch
from .xtok import XTOK_KEYS, TokenizerPair, cross_tokenizer_pair, tokenizer_name

VOCAB_ALIGNMENTS = ("strict", "truncate")
STORED_HINT = ("teacher_outputs=True: wrap the data module in kd_lightning.cache.TeacherOutputsTokenDataModule so "
               "training batches carry the stored teacher outputs")
_STAT_NAMES = ("ce", "teacher_ce", "kd", "agree", "tokens", "kd_tokens", "bytes")


def check_fused_head(net: nn.Module) -> None:
    """``fused_head=True`` needs ``base_model`` (final hidden states) and a linear ``get_output_embeddings()``
    whose output is the logits as they are (no scaling or soft-capping after it)."""
    problem = fused_head_problem(net)
    if problem is not None:
        error, why = problem
        raise error(f"fused_head=True {why} — use fused_head=False")


def _batch_fields(batch: Any, pad_token_id: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    if not isinstance(batch, dict) or "input_ids" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"language-model batches must be dicts with input_ids (attention_mask, labels optional); "
                         f"got {got}")
    ids = batch["input_ids"]
    mask = attention_mask_of(batch, pad_token_id)  # padding is never distilled: no mask is a mask only when provable
    labels = batch.get("labels")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX) if labels is None else labels
    return ids, mask, labels, batch.get("bytes")


def token_part(loss: Loss) -> Optional[TokenKD]:
    """The one :class:`TokenKD` in ``loss`` (itself, or a part of a composite); None when there is none."""
    if isinstance(loss, TokenKD):
        return loss
    if isinstance(loss, CompositeLoss):
        found = [p for p in (token_part(o) for o in loss.parts()) if p is not None]
        if len(found) > 1:
            raise ValueError(f"{type(loss).__name__} holds {len(found)} TokenKD losses; a causal LM takes one "
                             "(set ce_weight and kd_weight on it)")
        return found[0] if found else None
    return None


class CausalLMDistillationModule(TeacherStudentModule):
    """Train a causal-LM ``student`` against a frozen ``teacher`` with :class:`~kd_lightning.losses.TokenKD`.

    Batches are dicts of ``input_ids``, ``attention_mask`` and ``labels`` (-100 = no loss), optionally
    ``bytes`` (UTF-8 bytes of the text, for bits per byte). Both models are any Hugging Face causal LM or
    any ``nn.Module`` mapping ``input_ids`` to logits ``[B, T, V]`` (or to an object with ``.logits``, or to
    a tuple whose first item is the logits).

    The teacher (one model, or a list of them: a weighted ensemble whose next-token probabilities are
    averaged) is wrapped in :class:`~kd_lightning.teacher.FrozenTeacher`: ``requires_grad=False``, eval
    mode whatever ``.train()`` is called with, run under ``no_grad``, left out of the optimizer and out of
    checkpoints (``save_teacher=False``; loading refills its keys from the live teacher). All of that, the
    optimizer, the callbacks and the step-global reduction below belong to
    :class:`~kd_lightning.base.TeacherStudentModule`; this class says how a batch becomes a
    :class:`~kd_lightning.losses.TokenInputs` and measures perplexity and bits per byte. The loss must be of
    the token family (a classifier loss such as ``KD`` is refused here): a ``TokenKD``, or a ``Compose`` of
    one ``TokenKD`` with feature losses of that family (``HiddenStates`` through taps on both models).

    **Reduction over an optimizer step** (:meth:`~kd_lightning.base.TeacherStudentModule.step_divisor`).
    Every term is ``Σ_{step's counted tokens} term / N`` with ``N``
    the counted tokens of the whole optimizer step — all ``A = trainer.accumulate_grad_batches``
    micro-batches on all ``W = trainer.world_size`` ranks — so gradients do not depend on how the step is
    split. ``N`` is only known once the last micro-batch is seen, so the module defers it, exactly:

    1. micro-batch ``i`` on rank ``r`` returns ``S_{r,i} · W·A / N_ref``, with ``S`` its sum of per-token
       terms and ``N_ref`` a number every rank agrees on (the previous step's ``N``; for the first step,
       ``A`` times the first micro-batch's count summed over ranks);
    2. Lightning divides each micro-batch loss by ``A`` and sums the gradients; DDP averages over ranks:
       the gradient is ``(1/W) Σ_r Σ_i (1/A) · W·A/N_ref · ∇S_{r,i} = Σ ∇S / N_ref``;
    3. in :meth:`on_before_optimizer_step` (after gradient unscaling, before clipping and the step) the
       local counts are summed over ranks with ``trainer.strategy.reduce`` and every gradient is multiplied
       by ``N_ref / N``, which leaves exactly ``Σ ∇S / N``.

    Callbacks' ``on_before_optimizer_step`` run before the module's and therefore see the gradients before
    step 3. A partial accumulation at the end of an epoch is handled too (its own ``N``). With
    ``kd_positions="all"`` and prompt labels of -100, CE shares the KD positions' count as its divisor
    (see :meth:`TokenKD.count_mask`).

    Args:
        student / teacher: the language models (teacher None: labels-only training, or stored teacher
            outputs; a list: an ensemble).
        loss: a token-family loss, :class:`TokenKD` or a ``Compose`` holding one; default forward KL with a
            teacher, plain CE without.
        ensemble_weights / ensemble_mode: for a teacher list, per-teacher weights and whether softened
            next-token probabilities (``"probs"``: ``T · log Σ_k w_k softmax(z_k / T)`` at the loss's ``T``)
            or logits (``"logits"``) are averaged (:class:`~kd_lightning.teacher.TeacherEnsemble`).
        optimizer: ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, lr=3e-3)``).
        scheduler: ``optimizer -> LRScheduler``, stepped every ``scheduler_interval`` (default ``"step"``).
        vocab_alignment: ``"strict"`` — teacher and student vocabularies must be the same size (checked on
            the first batch, before any step) and the tokenizers the same (checked here); ``"truncate"`` —
            same tokenizer, but the embedding matrices differ only in padding rows: the first
            ``min(V_t, V_s)`` logits are compared.
        tokenizer: the tokenizer both models share (saved by :meth:`save_student_pretrained`).
        teacher_tokenizer / student_tokenizer: with a token loss, when both are given their vocabularies must
            be equal. With a cross-tokenizer loss (:class:`~kd_lightning.losses.ULD`,
            :class:`~kd_lightning.losses.SpanAlign`) both are required (Hugging Face fast tokenizers) and may
            differ: the batches then come from :class:`~kd_lightning.lm.xtok.CrossTokenizerCollate` (each
            text tokenized by both, with the alignment), the teacher runs on its own tokens, the terms are
            means over each micro-batch, and evaluation reports the student's own ``ce``, ``ppl`` and
            ``bpb``. ``teacher_outputs``, ``on_policy`` and ``fused_head`` are refused with such a loss.
        bytes_per_token: UTF-8 bytes per token of the held-out text, for ``bpb`` (default: the batch's
            ``bytes`` key, or the datamodule's ``bytes_per_token`` attribute).
        save_teacher: keep the teacher's weights in checkpoints.
        on_policy: GKD's on-policy data (:class:`~kd_lightning.lm.generation.OnPolicy`): with probability
            ``lam`` a step trains on the student's own continuations of the batch's prompts, scored by the
            teacher on the generated tokens only (needs ``TokenKD(kd_positions="labels")``).
        fused_head: in training, run the student's base model for its final hidden states and give them with
            the output-embedding weight (``get_output_embeddings()``) to the loss, which then never
            materializes the student's ``[B, T, V]`` logits (:func:`~kd_lightning.losses.functional.
            token_divergence_fused`). Needs a Hugging Face-style causal LM (``base_model`` returning the final
            hidden states, a linear output layer, no logit scaling or soft-capping); evaluation still uses
            the full logits. A live teacher of that kind is fused the same way (it runs its base model only
            and the loss computes its logits chunk by chunk, so neither model's ``[B, T, V]`` logits exist);
            other teachers, an ensemble (a weighted mix of distributions, which no one output layer gives)
            and stored outputs still give their logits.
        teacher_outputs: train on stored teacher outputs instead of a live teacher (``teacher=None``): every
            training batch carries the teacher's top-k next-token ids, log-probabilities and rest mass
            (:class:`~kd_lightning.cache.tokens.TeacherOutputsTokenDataModule` adds them), and KD is the
            top-k forward KL of :class:`TokenKD` (``topk_tail`` picks the variant). No teacher runs;
            evaluation reports the student's metrics only. ``teacher`` and ``teacher_outputs`` make the
            module's ``teacher_signal`` (:mod:`kd_lightning.signal`).
        check_finite / finite_check_interval: see :class:`~kd_lightning.callbacks.FiniteLossCheck`.

    Logged: ``train/loss``, ``train/ce``, ``train/kd`` (means over each micro-batch's own tokens, averaged
    over the steps between logs), any feature term (``train/hidden``),
    ``train/tokens_per_s`` (input tokens of the step over all ranks / wall time between steps);
    ``val/`` and ``test/`` ``ce``, ``ppl`` (= exp(ce)), ``kd``, ``teacher_ce``, ``teacher_ppl``,
    ``agreement`` (top-1 next-token agreement with the teacher), ``bpb`` and ``teacher_bpb``, each a mean
    over all labelled tokens of the epoch.
    """

    family = TOKEN
    default_optimizer = functools.partial(torch.optim.AdamW, lr=3e-3)

    def __init__(
        self,
        student: nn.Module,
        teacher: Union[None, nn.Module, Sequence[nn.Module]] = None,
        loss: Optional[Loss] = None,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "step",
        vocab_alignment: str = "strict",
        tokenizer: Any = None,
        teacher_tokenizer: Any = None,
        student_tokenizer: Any = None,
        bytes_per_token: Optional[float] = None,
        save_teacher: bool = False,
        on_policy: Optional[OnPolicy] = None,
        fused_head: bool = False,
        teacher_outputs: bool = False,
        ensemble_weights: Optional[Sequence[float]] = None,
        ensemble_mode: str = "probs",
        check_finite: bool = True,
        finite_check_interval: Optional[int] = None,
    ):
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module (a causal LM), got {type(student).__name__}")
        if teacher is not None and not isinstance(teacher, (nn.Module, list, tuple)):
            raise TypeError(f"teacher must be an nn.Module (a causal LM), a list of them or None, got "
                            f"{type(teacher).__name__}")
        if vocab_alignment not in VOCAB_ALIGNMENTS:
            raise ValueError(f"vocab_alignment={vocab_alignment!r} is not known; use 'strict' or 'truncate'")
        if bytes_per_token is not None and not (isinstance(bytes_per_token, (int, float)) and bytes_per_token > 0):
            raise ValueError(f"bytes_per_token={bytes_per_token!r} must be a positive number (or None)")
        if loss is None:
            loss = TokenKD() if teacher is not None else TokenKD(ce_weight=1.0, kd_weight=0.0)
        frozen = build_teacher(teacher, None, ensemble_weights, ensemble_mode,
                               getattr(loss, "temperature", None) or 1.0) if teacher is not None else None
        signal = teacher_signal(frozen, TOKEN, stored=teacher_outputs, hint=STORED_HINT)
        super().__init__(student, signal, loss, optimizer, scheduler, scheduler_interval=scheduler_interval,
                         save_teacher=save_teacher, check_finite=check_finite,
                         finite_check_interval=finite_check_interval)
        self.save_hyperparameters(ignore=["student", "teacher", "loss", "optimizer", "scheduler", "tokenizer",
                                          "teacher_tokenizer", "student_tokenizer", "on_policy"])
        token = self.token_loss
        # A teacher with another tokenizer: its own code path (cross_inputs, cross_eval_step).
        self.xtok: Optional[TokenizerPair] = None
        if isinstance(loss, CrossTokenizerLoss):
            self.xtok = cross_tokenizer_pair(type(loss).__name__, teacher, teacher_tokenizer, student_tokenizer,
                                             teacher_outputs=teacher_outputs, on_policy=on_policy,
                                             fused_head=fused_head)
            self.register_buffer("teacher_shared_ids", self.xtok.teacher_shared_ids, persistent=False)
            self.register_buffer("student_shared_ids", self.xtok.student_shared_ids, persistent=False)
        elif token is None:
            raise TypeError(f"{type(loss).__name__} holds no TokenKD; a causal LM trains on TokenKD (alone or "
                            "composed with feature losses of the token family) or on a cross-tokenizer loss "
                            "(ULD, SpanAlign)")
        elif teacher_outputs:
            if teacher is not None:
                raise ValueError("teacher_outputs=True trains on stored teacher outputs; pass teacher=None (the live "
                                 "teacher would never run)")
            if not token.needs_teacher or token.divergence != "forward" or fused_head or on_policy is not None \
                    or loss.teacher_taps:
                raise ValueError(
                    f"teacher_outputs=True needs TokenKD(kd_weight>0, divergence='forward') without fused_head, "
                    f"on_policy or teacher features (got kd_weight={token.kd_weight}, divergence={token.divergence!r}, "
                    f"fused_head={fused_head}, on_policy={on_policy is not None}): the stored outputs are a top-k "
                    "forward-KL target")
        elif token.needs_teacher and teacher is None:
            raise ValueError(f"loss has kd_weight={token.kd_weight} but no teacher was given; pass teacher=... or use "
                             "TokenKD(ce_weight=1.0, kd_weight=0.0) for labels-only training")
        if self.xtok is None and teacher_tokenizer is not None and student_tokenizer is not None \
                and teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
            raise ValueError(
                f"teacher tokenizer {tokenizer_name(teacher_tokenizer)} and student tokenizer "
                f"{tokenizer_name(student_tokenizer)} differ; token-level KD needs one tokenizer (vocab_alignment="
                f"{vocab_alignment!r} cannot bridge different tokenizers): use a cross-tokenizer loss, "
                "loss=SpanAlign() or loss=ULD(), with batches from kd_lightning.lm.xtok.CrossTokenizerCollate")
        if on_policy is not None and (teacher is None or token.kd_positions != "labels"):
            raise ValueError("on_policy needs a teacher and TokenKD(kd_positions='labels'), so that the divergence "
                             "is taken on the generated tokens only (the prompt carries no label)")
        self.on_policy = on_policy
        if fused_head:
            check_fused_head(student)
        self.tokenizer = tokenizer if tokenizer is not None else (student_tokenizer or teacher_tokenizer)
        self.student_signature = call_signature(student)
        self.vocab_checked = False
        self.vocab_size: Optional[int] = None  # the compared width (min of both under "truncate")
        self.step_clock: Optional[float] = None  # for train/tokens_per_s
        for stage in ("val", "test"):
            for name in _STAT_NAMES:
                setattr(self, f"{stage}_{name}_sum", SumMetric(nan_strategy="disable"))

    @property
    def token_loss(self) -> Optional[TokenKD]:
        """The :class:`TokenKD` of the loss (the loss itself, or its one TokenKD part)."""
        return token_part(self.loss)

    # ------------------------------------------------------------------------------------ forward
    @property
    def pad_token_id(self) -> Optional[int]:
        """The tokenizer's pad id (None without a tokenizer): what a batch without ``attention_mask`` is checked for."""
        return getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        return lm_logits(self.student, input_ids, attention_mask, *self.student_signature)

    def run_models(self, ids: Tensor, mask: Tensor, labels: Tensor,
                   teacher_logits: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """The student's logits and ``teacher_logits`` (the teacher signal's), cut to the compared vocabulary."""
        student_logits = lm_logits(self.student, ids, mask, *self.student_signature)
        if not self.vocab_checked:
            self.check_vocab(student_logits, teacher_logits, ids, labels)
        if teacher_logits is not None and teacher_logits.shape[-1] != student_logits.shape[-1]:
            width = self.vocab_size
            student_logits, teacher_logits = student_logits[..., :width], teacher_logits[..., :width]
        return student_logits, teacher_logits

    def check_vocab(self, student_logits: Tensor, teacher_logits: Optional[Tensor], ids: Tensor, labels: Tensor) -> None:
        """On the first batch (before any optimizer step): the vocabularies must line up."""
        if student_logits.ndim != 3 or student_logits.shape[:2] != ids.shape:
            raise ValueError(f"the student must return logits [batch, time, vocab] for input_ids {tuple(ids.shape)}; "
                             f"got {tuple(student_logits.shape)}")
        v_s = student_logits.shape[-1]
        width = v_s
        if teacher_logits is not None:
            v_t = teacher_logits.shape[-1]
            if teacher_logits.shape[:2] != student_logits.shape[:2]:
                raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                                 f"{tuple(student_logits.shape)} disagree on [batch, time]")
            if v_t != v_s:
                if self.hparams.vocab_alignment == "strict":
                    raise ValueError(
                        f"vocabulary size mismatch: the teacher has {v_t} logits per token and the student {v_s}; "
                        "token-level KD needs the same vocabulary (use vocab_alignment='truncate' only if both share "
                        "one tokenizer and the extra rows are padding)")
                width = min(v_t, v_s)
                if self.tokenizer is not None and len(self.tokenizer) > width:
                    raise ValueError(
                        f"vocab_alignment='truncate' keeps the first {width} logits, but the tokenizer has "
                        f"{len(self.tokenizer)} tokens (teacher {v_t}, student {v_s}): the rows that differ are not "
                        "padding, so the vocabularies really differ")
        top = int(torch.where(labels == IGNORE_INDEX, ids, labels).max()) if ids.numel() else -1
        top = max(top, int(ids.max()) if ids.numel() else -1)
        if top >= width:
            raise ValueError(f"token id {top} is outside the compared vocabulary of {width} logits; the tokenizer does "
                             "not match the models' vocabulary")
        self.vocab_size = width
        self.vocab_checked = True

    # ---------------------------------------------------------------------------------- training
    def run_models_fused(self, ids: Tensor, mask: Tensor, labels: Tensor,
                         teacher: TeacherOutput) -> Tuple[Dict[str, Any], Optional[Tensor]]:
        """The student's final hidden states with its output layer (fused_head), the teacher's too when its
        signal gave them (else its logits, returned apart), each cut to the compared vocabulary."""
        hidden, weight, bias = final_hidden(self.student, ids, mask)
        fields: Dict[str, Any] = {"student_hidden": hidden, "lm_head_weight": weight, "lm_head_bias": bias}
        teacher_logits = teacher.logits
        t_weight, t_bias = teacher.head if teacher.head is not None else (None, None)
        if not self.vocab_checked:  # the logits' shapes without the logits
            lead = hidden.shape[:-1]
            teacher_shape = teacher_logits if t_weight is None else torch.empty((*lead, t_weight.shape[0]),
                                                                                device="meta")
            self.check_vocab(torch.empty((*lead, weight.shape[0]), device="meta"), teacher_shape, ids, labels)
        width = self.vocab_size
        if weight.shape[0] != width:
            fields.update(lm_head_weight=weight[:width], lm_head_bias=None if bias is None else bias[:width])
        if teacher_logits is not None and teacher_logits.shape[-1] != width:
            teacher_logits = teacher_logits[..., :width]
        if t_weight is not None:  # vocab_alignment="truncate" cuts the teacher's weight rows, not its logits
            fields.update(teacher_hidden=teacher.hidden, teacher_lm_head_weight=t_weight[:width],
                          teacher_lm_head_bias=None if t_bias is None else t_bias[:width])
        return fields, teacher_logits

    def loss_inputs(self, batch: Any, stage: str) -> TokenInputs:
        """The token loss's inputs; in training, the divisor is the step-global token count
        (:meth:`~kd_lightning.base.TeacherStudentModule.step_divisor`)."""
        train = stage == "train"
        if self.xtok is not None:
            return self.cross_inputs(batch, train)
        if train and self.on_policy is not None:
            generated = self.on_policy.draw()
            if generated:  # GKD: the student's own continuations of this batch's prompts
                batch = on_policy_batch(self.student, batch, self.on_policy)
            if self.attached_trainer() is not None:
                self.log("train/on_policy", float(generated), on_step=False, on_epoch=True)
        ids, mask, labels, _ = _batch_fields(batch, self.pad_token_id)
        fused = train and self.hparams.get("fused_head", False)
        teacher = self.teacher_output(batch, ids, mask, required=train, fused_head=fused)
        student: Dict[str, Any] = {}
        if fused:
            student, teacher_logits = self.run_models_fused(ids, mask, labels, teacher)
            student_logits = None
        else:
            student_logits, teacher_logits = self.run_models(ids, mask, labels, teacher.logits)
        self.teacher_signal.check(teacher, self.vocab_size, self.token_loss.temperature)  # once, for stored top-k
        s_taps = self.feature_taps()[0]
        num_tokens = None
        if train:
            if self.step_clock is None:
                self.step_clock = time.perf_counter()
            num_tokens = self.step_divisor(self.token_loss.count_mask(labels, mask).sum(), mask.sum())
        return TokenInputs(student_logits=student_logits, labels=labels, teacher_logits=teacher_logits,
                           attention_mask=mask, num_tokens=num_tokens,
                           student_features=s_taps.pop() if s_taps is not None else {},
                           teacher_topk=teacher.topk, teacher_features=teacher.features,
                           epoch=float(self.current_epoch + 1), **student)

    def logged_terms(self, terms: Dict[str, Tensor], inputs: TokenInputs) -> Dict[str, Tensor]:
        if self.xtok is not None:  # cross-tokenizer terms are already means over the micro-batch
            return super().logged_terms(terms, inputs)
        # The token terms are divided by the step's count: rescale them to means over this micro-batch's own
        # tokens for the log (the total changes by the same amounts).
        token = self.token_loss
        ce_mask, kd_mask = token.masks(inputs.labels, inputs.attention_mask)
        out = super().logged_terms(terms, inputs)
        ref = inputs.num_tokens.detach().float()
        ce = out["ce"] * ref / ce_mask.sum().clamp_min(1)
        kd = out["kd"] * ref / kd_mask.sum().clamp_min(1)
        out["loss"] = out["loss"] + token.ce_weight * (ce - out["ce"]) + token.kd_weight * (kd - out["kd"])
        out["ce"], out["kd"] = ce, kd
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        counts = self.finish_step(optimizer)
        if counts is None:
            return
        now = time.perf_counter()
        self.log("train/tokens_per_s", counts[1].float() / max(now - self.step_clock, 1e-9), on_step=True,
                 on_epoch=False)
        self.step_clock = now

    def on_train_epoch_start(self) -> None:
        self.step_clock = None

    # -------------------------------------------------------------------------------- evaluation
    def eval_step(self, batch: Any, stage: str) -> None:
        if self.xtok is not None:
            return self.cross_eval_step(batch, stage)
        ids, mask, labels, nbytes = _batch_fields(batch, self.pad_token_id)
        student_logits, teacher_logits = self.run_models(ids, mask, labels, self.teacher_output(batch, ids, mask).logits)
        s_taps = self.feature_taps()[0]
        if s_taps is not None:
            s_taps.pop()  # evaluation reads logits only
        token = self.token_loss
        ce_mask, kd_mask = token.masks(labels, mask)
        rows, y, s = self.count_student(stage, student_logits, labels, ce_mask, nbytes)
        stat = lambda name: getattr(self, f"{stage}_{name}_sum")  # noqa: E731
        if teacher_logits is not None:
            t = teacher_logits[:, :-1].reshape(-1, teacher_logits.shape[-1]).index_select(0, rows).float()
            stat("teacher_ce").update(nn.functional.cross_entropy(t, y, reduction="sum"))
            stat("agree").update((s.argmax(-1) == t.argmax(-1)).sum().float())
            if token.kd_weight > 0:
                with torch.autocast(device_type=ids.device.type, enabled=False):
                    kd_sum = token(student_logits, teacher_logits, labels, mask, num_tokens=1.0)["kd"]
                stat("kd").update(kd_sum)
                stat("kd_tokens").update(kd_mask.sum().float())

    def count_student(self, stage: str, student_logits: Tensor, labels: Tensor, counted: Tensor,
                      nbytes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Add the student's summed cross-entropy over the ``counted [B, T-1]`` next-token positions, their
        number and the batch's bytes to the stage's sums; returns (rows, targets, the student's fp32 rows)."""
        rows = counted.reshape(-1).nonzero().squeeze(-1)
        y = labels[:, 1:].reshape(-1).index_select(0, rows)
        s = student_logits[:, :-1].reshape(-1, student_logits.shape[-1]).index_select(0, rows).float()
        stat = lambda name: getattr(self, f"{stage}_{name}_sum")  # noqa: E731
        stat("ce").update(nn.functional.cross_entropy(s, y, reduction="sum"))
        stat("tokens").update(torch.tensor(float(rows.numel()), device=labels.device))
        if nbytes is not None:
            stat("bytes").update(torch.as_tensor(nbytes, device=labels.device).sum().float())
        return rows, y, s

    # --------------------------------------------------------------- teacher with another tokenizer
    def cross_inputs(self, batch: Any, train: bool) -> CrossTokenInputs:
        """A cross-tokenizer loss's inputs: the student on its tokens, the teacher on its own tokens of the
        same texts, and the alignment the batch carries (:class:`~kd_lightning.lm.xtok.CrossTokenizerCollate`).
        Its terms are means over this micro-batch (no step-global divisor)."""
        missing = [k for k in XTOK_KEYS if not isinstance(batch, dict) or k not in batch]
        if missing:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"{type(self.loss).__name__} needs both tokenizations of each text, but the batch has no "
                             f"{', '.join(missing)} (it holds {got}); collate the texts with "
                             f"kd_lightning.lm.xtok.CrossTokenizerCollate(teacher_tokenizer, student_tokenizer)")
        ids, mask, labels, _ = _batch_fields(batch, self.pad_token_id)
        t_ids, t_mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
        teacher_logits = self.teacher_output(batch, t_ids, t_mask, required=train).logits
        student_logits = lm_logits(self.student, ids, mask, *self.student_signature)
        if not self.vocab_checked:
            self.check_cross_vocab(student_logits, teacher_logits, ids, t_ids)
        return CrossTokenInputs(
            student_logits=student_logits, labels=labels, teacher_logits=teacher_logits, attention_mask=mask,
            teacher_input_ids=t_ids, teacher_attention_mask=t_mask, student_input_ids=ids,
            student_span=batch["student_span"], teacher_span=batch["teacher_span"],
            student_edge=batch["student_edge"], teacher_edge=batch["teacher_edge"],
            student_shared_ids=self.student_shared_ids, teacher_shared_ids=self.teacher_shared_ids,
            epoch=float(self.current_epoch + 1))

    def check_cross_vocab(self, student_logits: Tensor, teacher_logits: Optional[Tensor], ids: Tensor,
                          teacher_ids: Tensor) -> None:
        """On the first batch: each model's logits must cover its own tokenizer's ids (and the shared ones)."""
        checks = [("student", student_logits, ids, self.student_shared_ids, self.xtok.student_name)]
        if teacher_logits is not None:
            checks.append(("teacher", teacher_logits, teacher_ids, self.teacher_shared_ids, self.xtok.teacher_name))
        for role, logits, role_ids, shared, name in checks:
            if logits.ndim != 3 or logits.shape[:2] != role_ids.shape:
                raise ValueError(f"the {role} must return logits [batch, time, vocab] for its input_ids "
                                 f"{tuple(role_ids.shape)}; got {tuple(logits.shape)}")
            top = max(int(role_ids.max()) if role_ids.numel() else -1, int(shared.max()) if shared.numel() else -1)
            if top >= logits.shape[-1]:
                raise ValueError(f"token id {top} of the {role} tokenizer {name} is outside the {role}'s "
                                 f"{logits.shape[-1]} logits; give the {role} the tokenizer it was built for")
        self.vocab_size = student_logits.shape[-1]
        self.vocab_checked = True

    def cross_eval_step(self, batch: Any, stage: str) -> None:
        """The student's held-out cross-entropy and bits per byte on its own tokens (the teacher's own
        metrics belong to its tokenization, measured where it is trained)."""
        ids, mask, labels, nbytes = _batch_fields(batch, self.pad_token_id)
        student_logits = lm_logits(self.student, ids, mask, *self.student_signature)
        self.count_student(stage, student_logits, labels, (labels[:, 1:] != IGNORE_INDEX) & mask[:, 1:].bool(), nbytes)

    def bytes_per_token(self) -> Optional[float]:
        if self.hparams.bytes_per_token is not None:
            return float(self.hparams.bytes_per_token)
        trainer = self.attached_trainer()
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        value = getattr(dm, "bytes_per_token", None)
        return float(value) if value else None

    def log_eval(self, stage: str) -> Dict[str, float]:
        stat = lambda name: getattr(self, f"{stage}_{name}_sum")  # noqa: E731
        out: Dict[str, Tensor] = {}
        if stat("tokens").update_called:
            tokens = stat("tokens").compute().clamp_min(1.0)
            nats = stat("ce").compute()
            out["ce"] = nats / tokens
            out["ppl"] = out["ce"].exp()
            nbytes = stat("bytes").compute() if stat("bytes").update_called else None
            if nbytes is None and self.bytes_per_token() is not None:
                nbytes = tokens * self.bytes_per_token()
            if nbytes is not None:
                out["bpb"] = nats / math.log(2) / nbytes
            if stat("teacher_ce").update_called:
                t_nats = stat("teacher_ce").compute()
                out["teacher_ce"] = t_nats / tokens
                out["teacher_ppl"] = out["teacher_ce"].exp()
                out["agreement"] = stat("agree").compute() / tokens
                if nbytes is not None:
                    out["teacher_bpb"] = t_nats / math.log(2) / nbytes
            if stat("kd").update_called:
                out["kd"] = stat("kd").compute() / stat("kd_tokens").compute().clamp_min(1.0)
        for name in _STAT_NAMES:
            stat(name).reset()
        for name, value in out.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "ppl")
        return {k: float(v) for k, v in out.items()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_eval("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_eval("test")

    # -------------------------------------------------------------------------------------- export
    def save_student_pretrained(self, path: str | os.PathLike, tokenizer: Any = None, merged: bool = False) -> str:
        """``save_pretrained`` the (Hugging Face) student and its tokenizer into ``path``.

        The folder then loads with ``AutoModelForCausalLM.from_pretrained(path)`` and
        ``transformers.pipeline("text-generation", model=path)``. A PEFT student (LoRA adapters on a frozen
        base) writes its adapter (``adapter_config.json`` and the adapter weights; it loads with
        ``peft.PeftModel.from_pretrained(base, path)``), or with ``merged=True`` the base with the adapters
        merged in, a plain model that loads as above.
        """
        student = self.student
        if merged:
            from .lora import merged_copy

            student = merged_copy(student)
        if not hasattr(student, "save_pretrained"):
            raise TypeError(f"the student is a {type(self.student).__name__}, not a Hugging Face model; save its "
                            "weights with torch.save(module.student.state_dict(), path) instead")
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("save_student_pretrained needs the tokenizer (pass tokenizer=... here or to the module) "
                             "so that pipeline('text-generation', model=path) can load the folder")
        path = os.fspath(path)
        config = getattr(student, "config", None)
        if config is not None:
            for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
                if getattr(config, attr, None) is None and getattr(tokenizer, attr, None) is not None:
                    setattr(config, attr, getattr(tokenizer, attr))
        student.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
