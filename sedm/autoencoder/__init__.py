"""The cohort's own latent autoencoder (``sedm train-autoencoder``): see :mod:`sedm.autoencoder.model`."""
