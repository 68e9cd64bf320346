"""Demo data source: temperature and vibration readings, labelled by failure."""

from forml import project
from forml.pipeline import payload

from forml_s3.demo.schema import Reading

FEATURES = Reading.select(Reading.Temperature, Reading.Vibration)

project.setup(project.Source.query(FEATURES, Reading.Failure) >> payload.ToPandas(columns=['Temperature', 'Vibration']))
