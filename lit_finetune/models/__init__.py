"""Plain ``nn.Module`` building blocks: backbones and their weights, heads, stages, the classifier and segmenter networks.

Nothing here knows about Lightning's loop or about tasks: the Lightning modules in :mod:`lit_finetune.modules`
compose these parts.
"""
