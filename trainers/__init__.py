"""Trainer subclasses, their arguments, distributed losses and callbacks."""
