"""HTTP edge of runledger: routes, wire formats and error mapping."""
