"""The bottom layer: error types and the one-line command-line contract, the output contract (atomic files,
results folders), precision, device choice, checkpoint files and pictures. Imports nothing of the project above it."""
