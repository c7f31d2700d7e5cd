"""Analysis: a model with its chain, one image's forward record, roots, paths, gradients and interventions."""
