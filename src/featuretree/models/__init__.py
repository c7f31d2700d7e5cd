"""Model architectures written in plain torch."""
