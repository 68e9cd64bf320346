"""forml-s3 demo project: predicting machine failures from two sensor readings."""
