"""Presets: random models of the families' real classes, built locally (`tiny` for tests and demos, `sizes` for
pre-training from scratch), their tokenizers (`bpe`) and builders (`builders`), and where they are stored (`store`)."""
