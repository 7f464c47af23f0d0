"""What training needs beyond the families: losses, random transforms, perturbations, distributed helpers,
resume, clean stopping and model summaries."""
