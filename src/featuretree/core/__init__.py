"""Core: errors, units and layer layouts, images, caches, sample photos. Imports nothing else of featuretree."""
