"""exprl: kernel-accelerated exploratory RL mid-training for language models."""

__version__ = "0.1.0"
