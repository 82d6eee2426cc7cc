"""``python -m regtask_cli``: the same app as the ``regtask`` console script."""

from regtask_cli.main import app

app()
