"""Stored teacher outputs: run the teacher once, then train the student on what it wrote, with no teacher.

One store serves both model families (:class:`~kd_lightning.cache.store.OutputStore`): a directory of
``.npy`` arrays plus a ``meta.json`` written last, named by a hash of everything that shapes the outputs

* the teacher's weights (every tensor of its ``state_dict``, bit for bit),
* the data: a fingerprint of the dataset (its tensors where it has any, else its type and length) and
  the data config given by the caller (and, for language models, the tokenizer),
* the transform (its ``repr``, which lists every parameter of torchvision transforms),
* the storage options (fp16, top-k, temperature).

So a retrained teacher, another split or another normalization gets another directory and never reads
stale targets. Every array is written to a temporary file and moved into place with ``os.replace``;
``meta.json`` (shape, dtype, key, row count, a SHA-256 of the array bytes) comes last, so a directory
without it is an unfinished write and is rebuilt, and one with it is checked on open: a wrong shape,
dtype, key or a truncated file is an error (:class:`TeacherOutputsError`), never silently wrong targets.
The SHA-256 of every array is checked on open (``verify=True``, the default), so content changed in place
(bit flips, an edited row: same size, same header) is caught too; it costs one read at ~1 GB/s (13 ms
for CIFAR-100's 50k x 100 fp32 logits, ~2.5 s for ImageNet's 1.28M x 1000 fp16 from the page cache).
``get_or_build`` opens or builds under a file lock, so concurrent runs sharing a directory build once,
and rebuilds outputs that fail a check, with a warning naming the file (``rebuild_damaged=False`` makes
it an error instead).

Classifiers (:class:`TeacherOutputs`, one row per sample) and their exact reconstruction
(see :func:`reconstruct_topk`):

* full fp32: the teacher's logits, exactly.
* ``fp16=True``: logits rounded to float16 (relative error <= 2**-11 per logit, i.e. an absolute error
  below 0.01 for |z| < 20; a logit beyond the float16 range is refused). Rows are returned as float32.
* ``top_k=k``: per sample the ``k`` largest log-probabilities ``log p_i = z_i - logsumexp(z)`` at T=1
  and their class indices. The remaining mass ``r = 1 - sum_topk p_i`` is shared equally by the other
  ``C - k`` classes, so the reconstructed logits are ``z'_i = log p_i`` for the top-k classes and
  ``z'_j = log(r / (C - k))`` for the rest: ``softmax(z')`` reproduces the top-k probabilities exactly
  and gives every other class ``r / (C - k)``. The logits differ from the teacher's by a per-row
  constant on the top-k classes (softmax-invariant), so losses that compare raw logits
  (``LogitMSE``) must not use top-k storage, and at a temperature T != 1 the tail is an approximation
  (the KD loss error is then bounded by how much mass lies outside the top-k; see the tests).

:class:`TeacherOutputsDataset` serves ``{"input", "target", "index", "teacher_logits"}`` dicts (plus
``"labeled"`` when the base data has it) so shuffled loaders and DDP ranks read the rows of the samples
they actually got; :class:`TeacherOutputsDataModule` wraps a LightningDataModule and stores its train,
val and test outputs, and :class:`~kd_lightning.DistillationModule` with ``teacher=None`` trains on them.
Stored targets are fixed per sample: a random training transform (random crops, flips, ...) would show
the student a view the teacher never saw, so such transforms are refused unless
``allow_random_transform=True``.

Language models: :mod:`kd_lightning.cache.tokens` stores, per token, the teacher's top-k next-token ids and
log-probabilities plus the rest of the mass (:class:`TokenTeacherOutputs`,
:class:`TeacherOutputsTokenDataModule`), checked against the teacher's weights, the tokenizer and the
temperature before use; ``CausalLMDistillationModule(teacher=None, teacher_outputs=True)`` trains on them.
"""
from .data import TeacherOutputsDataset, TeacherOutputsDataModule
from .fingerprint import outputs_key, fingerprint_dataset, fingerprint_module, fingerprint_tokenizer
from .store import OutputStore, TeacherOutputs, TeacherOutputsError
from .tokens import TeacherOutputsTokenDataModule, TokenTeacherOutputs
from .topk import reconstruct_topk, topk_logprobs
from .transforms import RandomTransformError, check_transform, dataset_transform, find_random_transforms

__all__ = ["OutputStore", "TeacherOutputs", "TeacherOutputsError", "TeacherOutputsDataset", "TeacherOutputsDataModule",
           "TokenTeacherOutputs", "TeacherOutputsTokenDataModule", "fingerprint_tokenizer",
           "RandomTransformError", "outputs_key", "fingerprint_module", "fingerprint_dataset", "check_transform",
           "dataset_transform", "find_random_transforms", "topk_logprobs", "reconstruct_topk"]
