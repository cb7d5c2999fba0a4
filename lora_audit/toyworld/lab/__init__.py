"""The toy world's build and evaluation harness: training its models, victims, figures and results."""
