"""Models: pure-PyTorch layers (``layers``), item tokenizers (``tokenizers``) and RecBole models."""
