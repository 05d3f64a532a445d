"""Images as token sequences: pixels, data sets (digits, shapes, folders) and their evaluation."""
