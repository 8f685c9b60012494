"""editx.export: ONNX / TensorRT export of the decoder, vocoder and front-end graphs."""
