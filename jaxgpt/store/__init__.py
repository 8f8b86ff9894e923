"""What lives on disk: a run directory (rundir), Orbax checkpoints (checkpoint), Hugging Face and OpenAI
weights (convert, openai), and the one loader of every kind of model directory (loader)."""
