"""Generation from a trained LVDM: the inference pipeline (bundle loading, conditioning, decoding), conditioning
sources, output writers, serving requests, the default frame and resumable batch generation. The denoising
math (samplers, guidance, windows) lives in `echo_core.diffusion`; this package is the IO around it."""
