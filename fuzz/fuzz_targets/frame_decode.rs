#![no_main]
//! Fuzz target `frame_decode`: the input layout and the checks are documented on
//! `flightlog_fuzz::frame_decode`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: flightlog_fuzz::remember_panics_instead_of_aborting(),
    |data: &[u8]| flightlog_fuzz::run_contained(data, flightlog_fuzz::frame_decode)
);
