//! Benchmarks for kafka-mesh-filter live in `benches/`.
