"""Face embedders: map face images to L2-normalised identity vectors (the toy world's CNN, FaceNet)."""
