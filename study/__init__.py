"""melanoma-ssl-study: repeated-seed studies of self-supervised pre-training for melanoma classification."""

__version__ = "0.1.0"
