"""Stain: what "tissue pixel" and "optical density" mean everywhere in sedm, and the stain jitter.

One definition serves the synthesis fidelity numbers, the style-transfer measures of the diffusion
model, the parameter-free stain statistics the style encoder can read, and whole-slide statistics.
"""
