"""Identity: face embedders, face detection, identity metrics and the owner's leak score."""
