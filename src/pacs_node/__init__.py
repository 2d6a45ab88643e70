"""The DICOM side of the node: receives instances (C-ECHO, C-STORE SCP) and delivers results (C-STORE SCU)."""
