"""LightningModules: the shared task-driven base, the classifier, the segmentation module, test-time augmentation."""
