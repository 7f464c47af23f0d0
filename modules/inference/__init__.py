"""Inference: loading a model, the one animation pipeline (the CLI, the web page, the demo and the benchmarks
call it), engines, export, exact rewrites for speed, steady motion, automatic crop and paste-back."""
