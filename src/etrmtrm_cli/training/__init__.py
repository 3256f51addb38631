"""The training loop, its step, optimizers, evaluation, metrics, logging and multi-process context."""
