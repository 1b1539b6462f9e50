"""jmig: a cluster of simulated JOS machines with process save/load and migration."""
__version__ = "0.1.0"
