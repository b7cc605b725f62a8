"""The result of a run: the exported Hugging Face model, its card, a Hub push.

The consolidated Hugging Face model in `<run>/final/` (`huggingface`), its model
`card`, and the optional `push` to a Hub repository.
"""
