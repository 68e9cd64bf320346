"""Demo application descriptor: serves the latest generation of forml-s3-demo, re-checked every 2 seconds.

Published with ``forml application put application.py``. ForML's own ``Latest`` re-picks every 30 s from a thread
that stops for good at the first registry error or retired generation; ``Refreshing`` survives both.
"""

from forml import application

from forml_s3.selector import Refreshing

application.setup(application.Generic('forml-s3-demo', selector=Refreshing('forml-s3-demo', refresh=2)))
