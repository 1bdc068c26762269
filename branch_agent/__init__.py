"""Backroom branch agent: the store's PC next to the tills, scales and fiscal printers."""
