"""The HTTP ingress: style routing, variant splits, uploads, jobs and the web page."""
