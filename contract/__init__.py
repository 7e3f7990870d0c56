"""What producers and workers must agree on: settings, key scheme, digests, vector codec.

Kept free of ONNX Runtime and torch so a web app can install the producer alone.
"""
