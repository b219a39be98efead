"""Privacy of synthetic data: τ calibration (`calibrate`), the re-identification filter of candidate hearts
(`filter`), and the memorisation audit of generated videos (`audit`). The network is `models.reid`, its
training task `training.reid`; `frames` says which real frames and pairs they see."""
