"""Tree: the data model and its JSON, expansion (top-k), the builder, and edge verification."""
