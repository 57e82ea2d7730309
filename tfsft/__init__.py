"""tfsft: supervised fine-tuning of pretrained language models on TensorFlow/Keras 3."""

__version__ = "0.1.0"
