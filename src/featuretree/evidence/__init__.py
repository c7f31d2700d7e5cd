"""Evidence: what a node's pictures are made of, and receptive fields."""
