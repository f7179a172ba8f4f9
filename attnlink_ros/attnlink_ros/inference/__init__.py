"""Inference: ONNX export, backends (PyTorch, ONNX Runtime, TensorRT), engine cache."""
