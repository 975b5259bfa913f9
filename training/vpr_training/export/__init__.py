"""Export of trained or pretrained encoders to ONNX, with model cards and parity checks."""
