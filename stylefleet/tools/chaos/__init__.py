"""Chaos cases: break the running service on purpose, the way real users and real machines do,
and print what held. One module per case; ``python -m stylefleet.tools.chaos CASE`` runs one,
``make chaos`` runs every case that needs no argument (docs/operations.md "Chaos cases")."""
