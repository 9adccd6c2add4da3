"""Training: prepare / train / evaluate stages run by dvc.yaml; reference/ is the PyTorch reference model."""
