"""aigdetect: tell camera photographs from AI-generated images."""

__version__ = "0.1.0"
