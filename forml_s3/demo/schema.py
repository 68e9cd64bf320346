"""The demo dataset's schema: machine sensor readings and whether the machine failed soon after.

It lives in the platform package (not in the demo project) because the ``monolite`` feed configured in
``config.toml`` resolves its CSV origin by this schema's import path.
"""

from forml.io import dsl


class Reading(dsl.Schema):
    """One sensor reading of a machine; ``Failure`` is the label."""

    Temperature = dsl.Field(dsl.Float())
    Vibration = dsl.Field(dsl.Float())
    Failure = dsl.Field(dsl.Integer())
