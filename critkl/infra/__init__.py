"""Infrastructure with typed arguments: device meshes, multi-process runs and their launcher,
checkpoint I/O, TensorBoard, host memory, file writes, results folders (outputs) and run
provenance."""
