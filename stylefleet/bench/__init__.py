"""``stylefleet bench``: measurement code, one module per mode, kept apart from the product it measures."""
