"""``stylefleet batch``: a folder (or list of files) through one style, with progress and resume.

Two engines write the same outputs and the same manifest: ``http`` sends each image to the
running service; ``ray-data`` runs the models' own batch functions in a Ray Data pipeline.
"""
