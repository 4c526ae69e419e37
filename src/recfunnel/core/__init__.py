"""The bottom layer: plain data types, candidate lists, metrics, errors, config base,
fingerprints, cache paths and progress bars. Imports nothing else of recfunnel."""

__version__ = "0.2.0"
