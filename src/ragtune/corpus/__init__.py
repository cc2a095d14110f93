"""Turning files and labelled data sets into `Document`s, and documents into `Chunk`s."""
