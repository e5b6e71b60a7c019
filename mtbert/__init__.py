"""mtbert: multitask fine-tuning of BERT-family encoders from one TOML spec."""

__version__ = "0.1.0"
