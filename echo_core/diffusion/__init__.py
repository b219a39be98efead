"""Diffusion math, pure functions on latent tensors (video (B, C, T, h, w) or image (B, C, h, w)):

- `objectives`: v-prediction DDPM and rectified flow (training targets, time conventions, loss masks);
- `samplers`: the `SAMPLERS` registry (one signature for every sampler), `sample_video`, `sample_image`;
- `guidance`: classifier-free guidance (`Guidance`: branches and their combination);
- `windows`: long videos from a fixed-length model (`window_starts`, `merge_windows`, `guided_prediction`).
"""
