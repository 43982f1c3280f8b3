"""Robustness of the whole driving pipeline (issue 16): attacks at decision time on the camera frames,
through perception and policy (`attacks`), natural sensor corruptions (`corruptions`), and the
evaluation under them with guards against gradient masking (`evaluate`, `run.py evaluate --attack`)."""
