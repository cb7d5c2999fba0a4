"""The scan: collect files, run the checks (metadata, weights, pickle, identity) on each, never let one file stop a batch."""
