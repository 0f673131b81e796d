"""kembed eventing: CloudEvents-triggered batch embedding behind a Knative Broker/Trigger.

`python -m eventing` runs a small ASGI service (Starlette under uvicorn) that turns a
`dev.kembed.embeddings.requested` event into V2 calls to the InferenceService and answers with
`dev.kembed.embeddings.completed` events.
"""
