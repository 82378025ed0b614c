"""What every part shares: storage URLs (fsspec, atomic writes), strict configs with key=value
overrides, mask decoding and the palette. No torch models, no Ray jobs, no MLflow runs."""
