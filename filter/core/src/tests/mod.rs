//! Native tests of the core, fed whole, byte by byte and split at every boundary, with
//! real kafka-protocol encodings as the oracle.
mod fuzz;
mod fuzz_corpus;
mod policy;
mod policy_apis;
mod rewrite;
mod session;
mod walk;
