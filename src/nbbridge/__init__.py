"""nbbridge: reach Jupyter, ssh and any TCP service behind NAT through a relay that cannot
read the traffic."""

__version__ = "0.1.0"
