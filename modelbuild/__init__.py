"""Build a deployable ONNX embedding artifact (export, optimise, quantise, check, manifest)."""
