"""edge_node: capture, preprocess, run sub-models, publish features. Never imports torch."""
