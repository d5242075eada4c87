"""Names of the keys in sample, batch and output dictionaries.

Datasets return one dict per sample and the default collate function turns a list of them
into a dict of batched values. The module's ``forward`` and its step methods return dicts too.
Every producer and consumer uses these constants instead of string literals, so a rename is
one edit.
"""

# Sample and batch keys (produced by ``lit_finetune.data``).
IMAGE = "image"
"""Float image tensor, ``(C, H, W)`` per sample, normalized."""
TARGET = "target"
"""Class index (multiclass), float multi-hot vector (multilabel / binary) or int mask."""
INDEX = "index"
"""Position of the sample in its dataset, so that a sample can be found again."""
PATH = "path"
"""File the sample was read from (a string; a list of strings in a batch)."""
MIXED = "mixed"
"""``True`` in a training batch mixed by MixUp/CutMix (absent otherwise): its targets are not hard labels, and
metrics skip it. A data set of your own with fractional binary or multilabel targets sets it too (the modules
decide from this key and the target's shape, never by reading values on the device)."""
ORIGINAL_SIZE = "original_size"
"""Size of the image file, a long tensor ``(2,)`` = ``(height, width)`` (``(N, 2)`` in a batch); segmentation predict."""

# Output keys of ``FinetuneClassifier.forward``.
LOGITS = "logits"
"""Raw class scores, ``(N, num_classes)``."""
FEATURES = "features"
"""Pooled embedding that the head sees, ``(N, D)``; present when asked for."""
AUX_LOGITS = "aux_logits"
"""Logits of an auxiliary head (inception_v3 in training mode)."""

# Extra keys of the dict returned by ``training_step`` / ``validation_step`` / ``test_step``.
LOSS = "loss"
"""Scalar loss of the step (the value Lightning back-propagates in training)."""
SAMPLE_LOSS = "sample_loss"
"""Detached per-sample losses, ``(N,)``: the input of best/worst selection."""

# Extra key of the dict returned by ``predict_step``.
PREDICTION = "prediction"
"""A :class:`lit_finetune.tasks.Prediction` (probabilities, classes, multilabel label sets)."""
