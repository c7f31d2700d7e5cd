"""Reports: the layer listing, the model-randomisation sanity check and the rule evaluation."""
