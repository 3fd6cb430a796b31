"""Layer 1: model files and checkpoints as plain arrays + JSON (numpy, json; never pickle)."""
