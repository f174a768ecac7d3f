"""No-op TorchServe handler: the same archive and config as ours, but a fixed answer and no model or torch call.

The serving benchmark packages the run directory with this file in place of tabular_handler.py, so the ratio
ours / no-op isolates what our handler costs on top of TorchServe itself (frontend, IPC, worker loop).
"""

ANSWER = '{"predictions":[12.0],"model":"bench","version":"1.0"}'


def handle(data, context):
    """Return one fixed JSON answer per request of the batch (None at TorchServe's load-time call)."""
    if data is None:
        return None
    for i in range(len(data)):
        context.set_response_content_type(i, "application/json")
    return [ANSWER] * len(data)
