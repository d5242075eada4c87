"""Optimization helpers: freezing, parameter groups, schedulers, the LR finder and the frozen-backbone feature cache."""
