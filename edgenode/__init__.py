"""edgenode: take a Neural-ODE face classifier from training to an edge device."""

__version__ = "0.1.0"
