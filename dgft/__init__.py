"""dgft: fine-tune diffusion language models on constraint tasks."""
