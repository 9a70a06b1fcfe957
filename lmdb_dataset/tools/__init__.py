"""The command line and what only it and the demo use: ``info``/``verify``/``reindex``, ``bench``,
``demo`` and its sample photo folders.
"""
