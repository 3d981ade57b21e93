//! Usher's autoscaler: scales LMS Deployments from the balancer's metrics.
//!
//! The decision is a pure function ([`decide::decide`]) of a validated
//! [`policy::Policy`], the observations so far and the time; the controller,
//! the local-process scaler and the simulator all call the same function.

pub mod controller;
pub mod crd;
pub mod decide;
pub mod deletion_cost;
pub mod filter;
pub mod lease;
pub mod local;
pub mod policy;
pub mod runner;
pub mod scrape;
pub mod sim;
pub mod source;
pub mod telemetry;
pub mod timeline;
