//! `lms-sim`: a simulated LMS pod (Moodle-like) for tests, demos and
//! benchmarks. The simulator lives in [`usher_examples::lms_sim`]; see its
//! docs for the worker pool, cold start and sessions.

use clap::Parser;

fn main() -> std::io::Result<()> {
    usher_examples::lms_sim::run(usher_examples::lms_sim::Args::parse())
}
