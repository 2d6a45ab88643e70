"""The worker: claims a job, assembles the volume, segments it and writes the SEG and SR files."""
