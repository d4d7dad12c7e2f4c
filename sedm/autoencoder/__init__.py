"""The cohort autoencoder stage (``sedm train-autoencoder``): training and QA; the networks are in
:mod:`sedm.models.autoencoder`."""
