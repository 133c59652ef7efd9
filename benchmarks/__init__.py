"""Side-by-side measurements. Each script writes its section of docs/benchmarks.md."""
