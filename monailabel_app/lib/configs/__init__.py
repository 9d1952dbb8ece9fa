"""One TaskConfig per model configuration file."""
