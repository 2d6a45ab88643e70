"""Stored instances → one volume with checked geometry: header values, frame geometry, pixels."""
