"""dynafuse: dynamic multimodal fusion for sentiment analysis."""

__version__ = "0.1.0"
