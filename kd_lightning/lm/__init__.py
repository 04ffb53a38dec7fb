"""Language-model distillation: the causal-LM module and what only language models need."""
from .init import init_student_from_teacher
from .module import CausalLMDistillationModule, lm_logits

__all__ = ["CausalLMDistillationModule", "init_student_from_teacher", "lm_logits"]
