"""Experiment runners on top of the library: sweeps over configs and seeds."""
