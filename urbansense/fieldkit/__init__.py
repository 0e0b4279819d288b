"""The field kit: turn a blank ESP32 into a registered node (``urbansense node``/``registry``).

Modules by concern: ``nodeconfig`` (config.json checked by the firmware's own rules),
``siteregistry`` (the site's registry file: lock, atomic writes), ``boardlink`` (mpremote as a
library), ``provision``, ``flash`` (esptool as a library), ``cli`` (the commands). Everything a
technician sees as an error is a ``FieldError`` whose message says what to do next.
"""

from urbansense.fieldkit._errors import FieldError

__all__ = ["FieldError"]
