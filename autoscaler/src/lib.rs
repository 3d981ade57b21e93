//! Usher's autoscaler: scales LMS Deployments from the balancer's metrics.
//!
//! This crate is a placeholder until the autoscaler lands (see the project's
//! issue tracker); the balancer already exports the metrics it will read.
