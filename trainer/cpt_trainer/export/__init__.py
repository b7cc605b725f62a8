"""The result of a run: the consolidated Hugging Face model in `<run>/final/` (`huggingface`), its model
`card`, and the optional `push` to a Hub repository.
"""
