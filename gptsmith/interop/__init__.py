"""Real models in and out: the mapping between gptsmith's run directories and other formats."""
