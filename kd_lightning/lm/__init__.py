"""Language-model distillation: the causal-LM module and what only language models need."""
from .generation import OnPolicy, Sampling, on_policy_batch
from .init import init_student_from_teacher
from .module import CausalLMDistillationModule
from .seqkd import SequenceKDDataModule
from .xtok import CrossTokenizerCollate, CrossTokenizerTextDataModule, align_tokens, shared_token_ids

__all__ = ["CausalLMDistillationModule", "OnPolicy", "Sampling", "init_student_from_teacher",
           "on_policy_batch", "SequenceKDDataModule", "CrossTokenizerCollate", "CrossTokenizerTextDataModule",
           "align_tokens", "shared_token_ids"]
