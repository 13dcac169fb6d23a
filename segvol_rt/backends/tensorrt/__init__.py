"""TensorRT: engine building from the ONNX graphs (:mod:`.build`, no torch
needed), the engine records in the manifest (:mod:`.engines`) and the runtime
backend (:mod:`.runner`). ``tensorrt`` and CuPy are imported lazily."""
