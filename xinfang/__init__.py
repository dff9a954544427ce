"""xinfang (信访): NLP for Chinese petitions — classification, repeat detection, inference API."""

__version__ = "0.1.0"
