"""Delivery channels: the adapters that send pages over the network (webhook, email).

`base` is the contract (content, delivery, attempt result, the `Channel` class), `retry` the
bounded backoff schedule, `render` the default messages, `http` what HTTP channels share,
`webhook` and `email` the channels, `dispatch` the one object the outbox sends through.
"""
