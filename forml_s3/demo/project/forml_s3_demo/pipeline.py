"""Demo pipeline: two stateful actors, so each generation stores two states."""

from forml import project
from forml.pipeline import wrap

with wrap.importer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

project.setup(StandardScaler() >> LogisticRegression(random_state=0))
