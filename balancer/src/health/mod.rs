//! Endpoint health: the pure state machines, and the task that runs active checks.

pub mod checker;
pub mod counter;
pub mod outlier;

pub use counter::{HealthCounter, Transition};
pub use outlier::OutlierState;
