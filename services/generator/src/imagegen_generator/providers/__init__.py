"""Model providers: Replicate, and a local Pillow drawer for development and benchmarks."""
