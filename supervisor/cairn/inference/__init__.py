"""Inference: model engines (llama.cpp, onnxruntime), the worker process, CPU pinning."""
