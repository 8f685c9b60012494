"""editx.export: ONNX / TensorRT export of the decoder, vocoder and front-end graphs, and the
runtime backends that run them in place of PyTorch.

    editx export --model dummy:tiny --out graphs/ --verify          # writes graphs/*.onnx + graphs.json
    rt = editx.Runtime.from_pretrained(model, backends="onnxruntime", export_dir="graphs/")
    rt = editx.Runtime.from_pretrained(model, device="cuda", backends={"dit": "tensorrt"})

Modules: `graphs` (registry + export), `onnx_<graph>` (each graph's signature and wrapper),
`store` (export folders), `verify` (onnxruntime vs torch vs float64), `ort` (onnxruntime runner),
`tensorrt` (profiles, fp32 fallback policy, plan cache, builder, runner), `backends` (per-stage
backend objects and model views, `apply_backends`), `cli` (`editx export`). See README.md.
"""
