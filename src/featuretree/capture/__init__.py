"""Capture: the single forward pass, its rectifier switch, and the hook helper."""
