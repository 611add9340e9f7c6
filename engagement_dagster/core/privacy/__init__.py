"""Privacy operations on the lake and the warehouse: erasure of one customer (`erase`)."""
