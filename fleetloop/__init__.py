"""fleetloop: the continuous-learning data engine for perception teams."""

__version__ = "0.1.0"
