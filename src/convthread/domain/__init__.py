"""The pure domain core: no I/O, no clock reads, no randomness. Time and ids come in."""
