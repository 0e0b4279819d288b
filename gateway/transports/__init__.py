"""Ingest transports: each turns a medium into ``verify.Heard`` items on the ingress queue."""
