"""What a job found and the DICOM objects that say so: findings, SEG, SR, their shared coded content and
their identity (UIDs, series, equipment), and the rejection note that retracts results a newer job
superseded."""
