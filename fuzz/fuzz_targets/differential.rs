//! cargo-fuzz target `differential`: see kafka_mesh_core::fuzzing::differential for the input format and
//! the properties it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kafka_mesh_core::fuzzing::differential(data));
