"""The models as pure compute (no Ray): decoded images and typed params in, results out."""
