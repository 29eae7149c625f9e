"""MIRage: safety fine-tuning of vision-language models on multi-image safety reasoning."""

__version__ = "0.1.0"
