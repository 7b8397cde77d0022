"""flowlabel: mark IPv6 flow labels with SciTags experiment and activity IDs.

A tc egress classifier (shipped compiled, CO:RE) rewrites the 20-bit flow label
of the packets of known flows; this package loads it, keeps its flow map and
turns flow events from storage systems into map entries.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
