"""Segmentation arms (real / stain-augmented / real + synthetic), training and whole-slide prediction."""
