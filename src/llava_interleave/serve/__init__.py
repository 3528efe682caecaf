"""Serving: an OpenAI-compatible HTTP API and a chat page over one loaded model.

`llava-interleave serve --model DIR` runs `app.create_app` under uvicorn. Requests are parsed and their
images decoded in the request threads (`protocol`, `media`), then queued for the one worker thread that
owns the model and runs compatible requests as one batch (`worker`). Importing this package is cheap: the
web stack is imported only by `app` and the `serve` command (`cli.serve`).
"""
