"""The web edge: the HTTP API, the Gradio UI, authentication and the chat service they share."""
