"""Experiments (``recfunnel eval``), the diagnosis (``recfunnel diagnose``), its report and
the statistics behind them."""
