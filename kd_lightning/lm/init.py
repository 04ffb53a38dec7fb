"""Initialise a smaller student from its teacher's weights (DistilBERT, Sanh et al. 2019).

DistilBERT halves BERT's depth and starts the student from every other teacher layer, with the same
hidden size so whole layers can be copied. Here: token (and position) embeddings, the chosen decoder
layers, the final norm and the LM head are copied from teacher to student.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import nn

# (decoder layer list, final norm, position embeddings or None) by Hugging Face family.
_LAYOUTS = (
    ("model.layers", "model.norm", None),            # Llama, Mistral, Qwen2, ...
    ("transformer.h", "transformer.ln_f", "transformer.wpe"),  # GPT-2
    ("gpt_neox.layers", "gpt_neox.final_layer_norm", None),    # GPT-NeoX / Pythia
)


def _get(net: nn.Module, path: str):
    try:
        return net.get_submodule(path)
    except AttributeError:
        return None


def _layout(net: nn.Module, who: str):
    for layers, norm, pos in _LAYOUTS:
        found = _get(net, layers)
        if isinstance(found, nn.ModuleList):
            return found, _get(net, norm), (_get(net, pos) if pos else None)
    raise ValueError(f"init_student_from_teacher: the {who} ({type(net).__name__}) has no decoder layer list at "
                     f"{', '.join(l for l, _, _ in _LAYOUTS)}; only Llama-, GPT-2- and NeoX-style models are supported")


def teacher_layers_for(layer_map: Union[str, Sequence[int]], n_student: int, n_teacher: int) -> List[int]:
    """Teacher layer index for each student layer: ``"every_other"`` -> 0, 2, 4, ...; ``"first"`` -> 0, 1, ...;
    or an explicit list."""
    if layer_map == "every_other":
        chosen = [2 * i for i in range(n_student)]
    elif layer_map == "first":
        chosen = list(range(n_student))
    elif isinstance(layer_map, (list, tuple)):
        chosen = [int(i) for i in layer_map]
        if len(chosen) != n_student:
            raise ValueError(f"layer_map lists {len(chosen)} teacher layers but the student has {n_student}; give one per "
                             "student layer")
    else:
        raise ValueError(f"layer_map={layer_map!r} is not known; use 'every_other', 'first' or a list of teacher layers")
    bad = [i for i in chosen if not 0 <= i < n_teacher]
    if bad:
        raise ValueError(f"layer_map picks teacher layer(s) {bad} but the teacher has {n_teacher} layers (0..{n_teacher - 1}); "
                         f"use a student with at most {(n_teacher + 1) // 2} layers for 'every_other', or list layers")
    return chosen


@torch.no_grad()
def init_student_from_teacher(student: nn.Module, teacher: nn.Module,
                              layer_map: Union[str, Sequence[int]] = "every_other") -> List[int]:
    """Copy embeddings, the selected decoder layers, the final norm and the LM head from ``teacher``.

    Both must be the same family with the same hidden size (and layer shapes); returns the teacher layer
    index used for each student layer.
    """
    s_layers, s_norm, s_pos = _layout(student, "student")
    t_layers, t_norm, t_pos = _layout(teacher, "teacher")
    s_emb, t_emb = student.get_input_embeddings(), teacher.get_input_embeddings()
    if s_emb.weight.shape != t_emb.weight.shape:
        raise ValueError(
            f"init_student_from_teacher: embeddings differ, student {tuple(s_emb.weight.shape)} vs teacher "
            f"{tuple(t_emb.weight.shape)} (vocab, hidden); layers can only be copied between models with the same "
            "vocabulary and hidden size — build the student with the teacher's hidden_size, or train it from scratch")
    chosen = teacher_layers_for(layer_map, len(s_layers), len(t_layers))

    def copy(dst: nn.Module, src: nn.Module, what: str) -> None:
        try:
            dst.load_state_dict(src.state_dict(), strict=True)
        except RuntimeError as err:
            raise ValueError(f"init_student_from_teacher: {what} differ in shape "
                             f"({str(err).splitlines()[0]}); the architectures must match layer for layer") from None

    copy(s_emb, t_emb, "the token embeddings")
    if s_pos is not None and t_pos is not None:
        copy(s_pos, t_pos, "the position embeddings")
    for i, j in enumerate(chosen):
        copy(s_layers[i], t_layers[j], f"student layer {i} and teacher layer {j}")
    if s_norm is not None and t_norm is not None:
        copy(s_norm, t_norm, "the final norms")
    s_head, t_head = student.get_output_embeddings(), teacher.get_output_embeddings()
    if s_head is not None and t_head is not None and s_head.weight is not s_emb.weight:
        copy(s_head, t_head, "the LM heads")
    return chosen
