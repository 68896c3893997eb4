"""Wire formats: one module per dialect, each a request schema and an encoder.

An encoder turns provider events into framed bytes (:mod:`gateway.dialects.base`
is the seam). Imports the framer, errors and providers' events only.
"""
