"""Building blocks and every network: FOMM's keypoint detector, dense motion, occlusion-aware generator and
discriminator; the keypoint-mask paper's masks and low-/high-res generators; the perturbed-masks mask network."""
