"""Image animation with keypoint masks, as a library in layers, bottom first; each folder imports only the
folders listed before it (docs/architecture.md; tests/test_layout.py checks it):

    core/        errors, the command-line contract, outputs, precision, device, checkpoint files, pictures
    nets/        building blocks and every network (FOMM's, the keypoint-mask paper's, the perturbed-masks paper's)
    config/      typed configs, their loading and checks, the family registry, checkpoint formats
    data/        video I/O, the dataset, augmentation, pairs, keypoint labels, the synthetic renderer
    training/    losses, transforms, perturbations, distributed helpers, resume, stopping, summaries
    families/    model building and one module per family (keypoint_mask, fomm, perturbed, detector)
    evaluation/  the scorer, the papers' metrics, landmark detectors, the keypoint regressor
    inference/   model loading, the animation pipeline, engines, export, rewrites, smoothing, crop, results
    app/         the web page

The front ends (run.py, train.py, reconstruction.py, animate.py,
frames_dataset.py, logger.py, scripts/, benchmarks/) sit above them all.
"""
