"""Sampling from a trained LVDM: the inference pipeline (bundle loading, conditioning, decoding), conditioning
sources, output writers and resumable batch generation. The denoising math lives in
`echo_core.diffusion.samplers`; this package is the IO around it."""
