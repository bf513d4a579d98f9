"""Sudoku task: grids, files, rendering."""
