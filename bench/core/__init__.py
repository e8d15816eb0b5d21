"""The machinery every wing uses: the training loop, models, metrics, precision,
parameters, artifacts and settings."""
