"""Latent space: VAE encoding into per-video latent stores, the stores, and the clip dataset training reads."""
