"""The reference camera detector: a small CenterNet-style PyTorch model, its trainer, ONNX export and runners."""
