"""Preview images: a base model loaded once, Kohya-format LoRA files applied at A1111 multipliers and
removed again, images with A1111 PNG parameters, labelled X/Y grids; the `generate` and `compare` jobs."""
