"""What a dissection writes and shows: tally.csv and results.json, their checks, and
the HTML reports."""
