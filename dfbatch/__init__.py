"""dfbatch: distributed batch scoring of video archives for deepfakes."""

__version__ = "0.1.0"
