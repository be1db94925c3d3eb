//! Benchmarks and scenario runner.
