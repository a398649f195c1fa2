"""Masked (absorbing) diffusion language models."""
