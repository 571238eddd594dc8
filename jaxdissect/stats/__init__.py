"""Streaming statistics of a dissection (quantiles, tallies, top images, scores,
upsampling), each with its CPU kernel where it has one."""
