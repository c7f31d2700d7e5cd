"""Class-level graphs over an image folder (``featuretree aggregate``)."""
