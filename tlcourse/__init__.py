"""tlcourse: helpers for a hands-on course on transfer learning for image classification.  Import
the modules you need explicitly (``from tlcourse import data, models``); importing changes no global state."""

__version__ = "0.1.0"
