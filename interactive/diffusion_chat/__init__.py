"""A web chat that shows a diffusion LM's answer being denoised (`python -m interactive.diffusion_chat`)."""
