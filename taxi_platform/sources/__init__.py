"""Where a month's file comes from: the public sources, the landing zone, and parsing it."""
