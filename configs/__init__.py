"""Training configs: `--config=configs/<name>.py[:arg]`, or `from configs import <name>`."""
