"""Traces (issue 12, in progress; not registered yet): OTLP spans stored, indexed and searched per tenant.

models (the normalised Span and limits), otlp (OTLP/HTTP decoding and responses),
_layout (keys and row codecs), service (ingestion, trace reads, search).
"""
