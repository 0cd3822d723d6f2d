"""Video data: annotation sources, decoding, clip sampling, transforms, datasets, the synthetic set."""
